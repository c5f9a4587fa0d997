#!/bin/bash
# Evaluate classifiers on CE stores with a SLURM job array:
#
#   sbatch slurm/eval_ce.sh --store runs/cifar10-boltzmann.zarr \
#       --classifier standard=ckpt/standard.pt --classifier robust=ckpt/robust-l2.pt --out runs/cifar10.eval
#
# The arguments are those of `python -m cejobs.evaluate`. Every array task checks the inputs,
# creates eval/<name>/ in each store (atomically, so every task may try), then claims shards
# not yet evaluated and runs them until none is left (cejobs/backends/slurm/). The first task
# submits the final step (--dependency=afterany on this array): `python -m cejobs.evaluate`
# with the same arguments on one CPU, which finds every shard evaluated and writes
# summary.json, tables/, report.md and figures/ (log: <job name>-summary-<id>.out in the
# submit directory). Resubmitting the same command finishes what is left.
#
# Preemption and time limits work as in gen_ce.sh: SIGUSR2 (--signal=B:USR2@120) abandons the
# running shard, releases its claim, and requeues the task.
# Environment: CEJOBS_PYTHON (default: python); CEJOBS_SUMMARY=0 skips the final step;
# CEJOBS_SUMMARY_SBATCH adds sbatch flags to it.
#
#SBATCH --job-name=cejobs-eval
#SBATCH --array=0-3%4
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=01:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out

set -euo pipefail
if (( $# < 1 )); then
    echo "usage: sbatch slurm/eval_ce.sh --store S.zarr --classifier NAME=CKPT [...] --out DIR" >&2
    exit 2
fi
echo "eval_ce.sh: task ${SLURM_ARRAY_TASK_ID:-none} of job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-none}}" \
     "(restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) [$(hostname -I 2>/dev/null | xargs || true)]"
exec "${CEJOBS_PYTHON:-python}" -m cejobs.array_task evaluate "$@"
