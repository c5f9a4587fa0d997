#!/usr/bin/env bash
# Does the ratio of CE distance to the robust radius explain why the digits
# robust models do not predict the source class of different-class CEs (paper fig. 4)?
# Boltzmann CEs of the digits test split at several sigma_CE (which sets how far CEs go), each
# store evaluated with the shipped classifiers (with bootstrap intervals), then one figure:
# P(source predicted) against the median different-class CE L2, one curve per classifier eps.
#
#   scripts/sigma_sweep.sh [execution flags for generate and evaluate, e.g. --backend local --threads 1]
#
# Environment (defaults in brackets):
#   OUT      output folder: stores sigma-<s>.zarr, the evaluation eval/, the figure [runs/sigma-sweep]
#   SIGMAS   sigma_CE values, in model space [-1, 1] ["0.025 0.05 0.1 0.2 0.4"]
#   SOURCES  first sources of the digits test split [40]
#   STEPS    Euler-Maruyama steps [250] (docs/performance.md "Fewer steps": ~4% of distance)
#   PER_CLASS  CEs per target class [1]
#   FIGURE   where the PNG goes [$OUT/sigma_sweep.png]
# Re-running resumes every step. Same seed (0) and sources in every store, so the stores are
# paired: the same Philox noise drives CE k of source i at every sigma.
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/sigma-sweep}
SIGMAS=${SIGMAS:-0.025 0.05 0.1 0.2 0.4}
SOURCES=${SOURCES:-40}
STEPS=${STEPS:-250}
PER_CLASS=${PER_CLASS:-1}
FIGURE=${FIGURE:-$OUT/sigma_sweep.png}
PY=${PYTHON:-python}
extra=("$@")

stores=()
for s in $SIGMAS; do
    echo "== $(date +%T) generate sigma_CE $s" >&2
    "$PY" -m cejobs.generate --store "$OUT/sigma-$s.zarr" --dataset digits --split test \
        --sources "$SOURCES" --per-class "$PER_CLASS" --method boltzmann --sigma-ce "$s" \
        --steps "$STEPS" --seed 0 "${extra[@]}"
    stores+=(--store "$OUT/sigma-$s.zarr")
done
echo "== $(date +%T) evaluate" >&2
"$PY" -m cejobs.evaluate --out "$OUT/eval" "${stores[@]}" "${extra[@]}"
"$PY" scripts/sigma_sweep_plot.py "$OUT/eval/summary.json" "$FIGURE" > "$OUT/eval/sigma_table.md"
echo "== $(date +%T) done; figure: $FIGURE; table: $OUT/eval/sigma_table.md" >&2
