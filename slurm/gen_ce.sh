#!/bin/bash
# Generate a CE store with a SLURM job array:
#
#   sbatch slurm/gen_ce.sh CONFIG.toml [generate flags, e.g. --store runs/x.zarr]
#   sbatch --array=0-31%16 --time=2:00:00 slurm/gen_ce.sh configs/cifar10.toml   # override
#
# Every array task creates or opens the store, then claims shards that are not done and runs
# them until none is left (cejobs/backends/slurm/), so the tasks share the work dynamically, and
# submitting the same command again finishes exactly what is left. The first task submits a
# small summary job (--dependency=afterany on this array) that verifies the store and prints
# its status line to <job name>-summary-<id>.out in the submit directory.
#
# Before the time limit, or on preemption, SLURM sends SIGUSR2 (--signal=B:USR2@120): the task
# abandons its running shard (not marked done), releases its claim, requeues itself with
# `scontrol requeue`, and continues from the store when it starts again. scancel (SIGTERM)
# stops a task the same way, without the requeue.
#
# The #SBATCH lines below are defaults; sbatch command-line options override them. Relative
# paths (config, store, model, data) are relative to the directory you submit from.
# Environment: CEJOBS_PYTHON (default: python) runs cejobs; CEJOBS_SUMMARY=0 skips the summary
# job; CEJOBS_SUMMARY_SBATCH adds sbatch flags to it.
#
#SBATCH --job-name=cejobs-gen
#SBATCH --array=0-7%8
#SBATCH --gres=gpu:1
#SBATCH --cpus-per-task=8
#SBATCH --mem=32G
#SBATCH --time=04:00:00
#SBATCH --requeue
#SBATCH --signal=B:USR2@120
#SBATCH --open-mode=append
#SBATCH --output=%x-%A_%a.out

set -euo pipefail
if (( $# < 1 )); then
    echo "usage: sbatch slurm/gen_ce.sh CONFIG.toml [python -m cejobs.generate flags]" >&2
    exit 2
fi
config="$1"
shift
echo "gen_ce.sh: task ${SLURM_ARRAY_TASK_ID:-none} of job ${SLURM_ARRAY_JOB_ID:-${SLURM_JOB_ID:-none}}" \
     "(restart ${SLURM_RESTART_COUNT:-0}) on $(hostname) [$(hostname -I 2>/dev/null | xargs || true)]," \
     "config ${config}"
# exec: python becomes the batch shell, so the B:USR2 warning and scancel's SIGTERM reach it.
exec "${CEJOBS_PYTHON:-python}" -m cejobs.array_task generate --config "${config}" "$@"
