"""How an array task that was stopped by SIGUSR2 (time limit near, or preemption) goes back
into the queue: `scontrol requeue` of its own job. The one requeue path of both SLURM ways to
run (the sbatch scripts through cejobs.array_task, and the backend's submitit array): the
requeued task starts again with the same arguments, and continues from the store.

A task is requeued at most `max_requeues` times (SLURM_RESTART_COUNT counts them); after that
it ends, and a resubmission finishes what is left.
"""

from __future__ import annotations

import subprocess

from cejobs.backends.slurm.claims import log
from cejobs.slurm_env import current_job


def requeue_self(max_requeues: int | None = None) -> bool:
    """Requeue this SLURM job (an array task: only this task); whether it was requeued."""
    job = current_job()
    if not job.job_id:
        log("not in a SLURM job: nothing to requeue")
        return False
    name = job.task or job.job_id
    if max_requeues is not None and job.restart_count >= max_requeues:
        log(f"job {name} was requeued {job.restart_count} time(s), the most allowed "
            f"(--slurm-max-timeouts); resubmit to finish the rest")
        return False
    proc = subprocess.run(["scontrol", "requeue", job.job_id], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        log(f"scontrol requeue {name} failed: {proc.stderr.strip()}; resubmit to finish the "
            f"rest")
        return False
    log(f"requeued job {name} (id {job.job_id}): it continues from the store when it starts "
        f"again")
    return True
