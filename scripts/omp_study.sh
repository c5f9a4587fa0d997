#!/usr/bin/env bash
# The OpenMP wait study in one go (scripts/omp_study.py; docs/performance.md, "OpenMP wait:
# measured"): bench sampler and the tiny run of bench load on local, Ray and SLURM, idle and
# beside two CPU burners, for passive, active, bounded spins, the cejobs default, and one
# thread per worker. Prints a markdown table. About 15-20 minutes on a 2-core machine with
# --repeat 2; run it when the machine is quiet (the table notes the load average).
#   scripts/omp_study.sh [--repeat N] [--backends local ray slurm] [--settings NAME ...]
#                        [--no-sampler] [--json FILE]
# PYTHON: the interpreter (default: python3). SLURM is used when sbatch is on PATH; the local
# cluster's environment is picked up when slurm/local/cluster.sh is running.
set -euo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if ! command -v sbatch >/dev/null && [ -x slurm/local/cluster.sh ]; then
  eval "$(slurm/local/cluster.sh env 2>/dev/null)" || true
fi
exec "${PYTHON:-python3}" scripts/omp_study.py "$@"
