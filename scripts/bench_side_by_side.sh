#!/usr/bin/env bash
# A benchmark of this checkout beside an earlier commit's code, interleaved in one invocation,
# so that a regression shows as a ratio measured under the same machine load (docs/
# performance.md, "Side by side with an earlier commit"):
#   scripts/bench_side_by_side.sh [--repeat N] [--metric KEY] [--env NAME=VALUE]... REV \
#                                 [-- MODULE ARGS...]
# REV's files are exported (git archive) into a temporary folder, removed at the end; each run is
# `python -m MODULE ARGS` (default: cejobs.bench sampler --device cpu) with cwd and PYTHONPATH
# set to its own tree, so each tree imports its own cejobs. Runs alternate (this tree first
# in odd repetitions, REV first in even ones); KEY (default ces_per_s_at_1000_steps) is read
# from the JSON the module prints, or `--metric wall` times the run. Prints every value,
# the medians, and this/REV: the ratio of medians and the range of the per-repetition ratios.
# Each tree applies its own OpenMP default: OMP_WAIT_POLICY, GOMP_SPINCOUNT and KMP_BLOCKTIME
# are cleared unless --env sets them (for both trees). `{tmp}` in ARGS becomes a fresh path
# per run (e.g. `--store {tmp}/ce.zarr`). PYTHON: the interpreter (python3).
set -euo pipefail
repeat=5 metric=ces_per_s_at_1000_steps envs=()
while [ $# -gt 0 ]; do
  case "$1" in
    --repeat) repeat=$2; shift 2 ;;
    --metric) metric=$2; shift 2 ;;
    --env) envs+=("$2"); shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) break ;;
  esac
done
usage="usage: $0 [--repeat N] [--metric KEY] [--env N=V] REV [-- MODULE ARGS]"
[ $# -ge 1 ] || { echo "$usage" >&2; exit 2; }
rev=$1; shift
[ "${1:-}" = "--" ] && shift
[ $# -gt 0 ] || set -- cejobs.bench sampler --device cpu
here="$(cd "$(dirname "$0")/.." && pwd)"
python="${PYTHON:-python3}"
sha="$(git -C "$here" rev-parse --verify --quiet "$rev^{commit}")" \
  || { echo "$0: not a commit: $rev" >&2; exit 2; }
other="$(mktemp -d /tmp/cejobs-side-by-side.XXXXXX)"
results="$other.values" scratch="$other.scratch" runs=0
trap 'rm -rf "$other" "$results" "$scratch"' EXIT
git -C "$here" archive "$sha" | tar -x -C "$other"  # a plain copy: no worktree to register
: > "$results"

one() {  # one run in tree $2, labelled $1: appends "label value" to $results
  local label=$1 tree=$2 out start end arg args=()
  shift 2
  runs=$((runs + 1)); mkdir -p "$scratch/$runs"
  for arg in "$@"; do args+=("${arg//\{tmp\}/$scratch/$runs}"); done
  start=$(date +%s.%N)
  out=$(cd "$tree" && env -u OMP_WAIT_POLICY -u GOMP_SPINCOUNT -u KMP_BLOCKTIME \
        ${envs[@]+"${envs[@]}"} PYTHONPATH="$tree" "$python" -m "${args[@]}")
  end=$(date +%s.%N)
  if [ "$metric" = wall ]; then
    echo "$label $(echo "$end - $start" | bc)" >> "$results"
  else
    echo "$label $(printf '%s' "$out" | "$python" -c \
      'import json, sys; print(json.load(sys.stdin)[sys.argv[1]])' "$metric")" >> "$results"
  fi
  echo "  $(tail -1 "$results")  (load $(cut -d' ' -f1 /proc/loadavg))" >&2
}

dirty="$(git -C "$here" diff --quiet HEAD || echo ', uncommitted changes')"
echo "this tree: $here ($(git -C "$here" rev-parse --short HEAD)$dirty); REV: ${sha:0:7}" \
     "load before: $(cut -d' ' -f1-3 /proc/loadavg)" >&2
for i in $(seq 1 "$repeat"); do
  if [ $((i % 2)) -eq 1 ]; then
    one this "$here" "$@"; one rev "$other" "$@"
  else
    one rev "$other" "$@"; one this "$here" "$@"
  fi
done
"$python" - "$results" "$metric" "${sha:0:7}" "$*" "$(cut -d' ' -f1-3 /proc/loadavg)" <<'PY'
import statistics, sys
path, metric, rev, command, load = sys.argv[1:]
values = {"this": [], "rev": []}
for line in open(path):
    label, value = line.split()
    values[label].append(float(value))
this, other = values["this"], values["rev"]
pairs = [a / b for a, b in zip(this, other)]
print(f"python -m {command}: {metric}, {len(this)} interleaved repetitions; load after {load}")
print(f"this tree: {', '.join(f'{v:.3f}' for v in this)} (median {statistics.median(this):.3f})")
print(f"{rev}:   {', '.join(f'{v:.3f}' for v in other)} (median {statistics.median(other):.3f})")
print(f"this / {rev}: {statistics.median(this) / statistics.median(other):.2f}x "
      f"(per repetition {min(pairs):.2f}-{max(pairs):.2f}x)")
PY
