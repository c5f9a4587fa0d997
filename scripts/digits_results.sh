#!/usr/bin/env bash
# The "Digits results" of docs/evaluation.md: CE stores of the digits test split made with the
# shipped models by every method, plus CEs of the robust CEs (paper fig. 5), then one
# evaluation of them all with the shipped classifiers: every metric with its 95% bootstrap
# interval over sources, the comparisons between stores (paired per CE where seed and sources
# agree: boltzmann, gaussian and boltzmann-exact; per source with robust; unpaired with
# boltzmann-of-robust) and between classifiers (each against standard, on the same CEs), and
# the tables of docs/evaluation.md "Digits results" ($OUT/eval/digits_table.md).
#
#   scripts/digits_results.sh [execution flags for generate and evaluate, e.g. --backend local]
#
# Environment (defaults in brackets):
#   OUT          output folder: stores <method>.zarr and the reports eval/, eval-fig5/ [runs/digits-results]
#   SOURCES      sources from the test split (450 = all of it) [450]
#   STEPS        Euler-Maruyama steps of the diffusion methods [1000]
#   ROBUST_PER_CLASS  robust CEs per target class [1]: the robust method is deterministic, so
#                more than 1 only repeats the same CE
#   CEC_SOURCES  sources of the CEs-of-robust-CEs store: the first CEC_SOURCES CEs of robust.zarr,
#                i.e. all CEs of the first CEC_SOURCES/K robust sources, K = 10 * ROBUST_PER_CLASS [200]
#   CEC_PER_CLASS  CEs per target class of each of those sources (each costs a diffusion CE) [2]
#   MODEL        diffusion checkpoint [data/digits/diffusion.pt]
#   ROBUST_CLASSIFIER  classifier of the robust method [data/digits/classifier-l2-eps1.0.pt]
#   CLASSIFIERS  "NAME=CKPT ..." to evaluate with [the shipped data/digits/classifier-*.pt]
# The generate flags are the stores' identities: keep them, or a re-run refuses the existing
# stores. Every store uses the generate default seed (0), which is what makes them paired.
# Re-running resumes every step. A small trial: STEPS=20 SOURCES=4 CEC_SOURCES=8 scripts/digits_results.sh --backend local
set -euo pipefail
cd "$(dirname "$0")/.."

OUT=${OUT:-runs/digits-results}
SOURCES=${SOURCES:-450}
STEPS=${STEPS:-1000}
ROBUST_PER_CLASS=${ROBUST_PER_CLASS:-1}
CEC_SOURCES=${CEC_SOURCES:-200}
CEC_PER_CLASS=${CEC_PER_CLASS:-2}
PY=${PYTHON:-python}
model=(); [[ -n "${MODEL:-}" ]] && model=(--model "$MODEL")
robust=(); [[ -n "${ROBUST_CLASSIFIER:-}" ]] && robust=(--classifier "$ROBUST_CLASSIFIER")
classifiers=(); for c in ${CLASSIFIERS:-}; do classifiers+=(--classifier "$c"); done

gen() {  # gen STORE-NAME [generate flags...]
    local name=$1; shift
    echo "== $(date +%T) generate $name" >&2
    "$PY" -m cejobs.generate --store "$OUT/$name.zarr" "$@" "${extra[@]}"
}
extra=("$@")

for method in boltzmann gaussian boltzmann-exact; do
    gen "$method" --dataset digits --split test --sources "$SOURCES" --method "$method" \
        --steps "$STEPS" "${model[@]}"
done
gen robust --dataset digits --split test --sources "$SOURCES" --method robust \
    --per-class "$ROBUST_PER_CLASS" "${robust[@]}"
# Paper fig. 5: Boltzmann CEs of the robust classifier's CEs (their targets are the labels)
gen boltzmann-of-robust --dataset "store:$OUT/robust.zarr" --sources "$CEC_SOURCES" \
    --per-class "$CEC_PER_CLASS" --method boltzmann --steps "$STEPS" "${model[@]}"

echo "== $(date +%T) evaluate" >&2
"$PY" -m cejobs.evaluate --out "$OUT/eval" "${classifiers[@]}" "${extra[@]}" \
    --store "$OUT/boltzmann.zarr" --store "$OUT/gaussian.zarr" \
    --store "$OUT/boltzmann-exact.zarr" --store "$OUT/robust.zarr" \
    --store "$OUT/boltzmann-of-robust.zarr"
# fig. 5 on its own: CEs of clean data against CEs of robust CEs (the arrays are already there)
"$PY" -m cejobs.evaluate --out "$OUT/eval-fig5" "${classifiers[@]}" "${extra[@]}" \
    --store "$OUT/boltzmann.zarr" --store "$OUT/boltzmann-of-robust.zarr" --no-progress
# the tables of docs/evaluation.md "Digits results" (with intervals and comparisons), from summary.json
"$PY" scripts/digits_results_table.py "$OUT/eval/summary.json" > "$OUT/eval/digits_table.md"
"$PY" scripts/digits_results_table.py "$OUT/eval-fig5/summary.json" > "$OUT/eval-fig5/digits_table.md"
echo "== $(date +%T) done; table: $OUT/eval/digits_table.md; report: $OUT/eval/report.md (fig. 5: $OUT/eval-fig5/figures/distance_histograms.png)" >&2
