#!/usr/bin/env bash
# The OpenMP wait study in one go (scripts/omp_study.py; docs/performance.md, "OpenMP wait:
# measured"): bench sampler and the tiny run of bench load on local, Ray and SLURM, idle and
# beside two CPU burners, for passive, active, bounded spins, the cejobs default, and one
# thread per worker. Prints a markdown table. On a 2-core machine a repetition takes some
# 15 minutes, more when ACTIVE and libgomp's default collapse beside the burners (minutes per
# run); --settings picks a few. Run it when the machine is quiet (the table notes the load).
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
