"""The one reader of SLURM's queue, and what its job states mean to cejobs.

A state is one of three kinds:
- RUNNING_STATES: the job's processes may be running now (its claims are live);
- FINAL_STATES: the job has ended for good (it will never run again);
- any other (PENDING, REQUEUED, REQUEUE_HOLD, ...): waiting; it may run later, but no process
  of it runs now.
"""

from __future__ import annotations

import subprocess
import time
from dataclasses import dataclass

RUNNING_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED",
                            "SIGNALING", "STAGE_OUT", "RESIZING"})
FINAL_STATES = frozenset({"COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL",
                          "BOOT_FAIL", "DEADLINE", "OUT_OF_MEMORY", "SPECIAL_EXIT", "PREEMPTED"})
SQUEUE_CACHE_S = 20.0  # how long one squeue answer is reused by SlurmJobs


@dataclass(frozen=True)
class QueuedJob:
    job_id: str  # SLURM_JOB_ID (unique per array task)
    name: str  # "<array>_<task>" for an array task, else the job id
    state: str

    @property
    def running(self) -> bool:
        return self.state in RUNNING_STATES

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def read_queue(job: str | None = None) -> list[QueuedJob] | None:
    """The jobs SLURM still knows (those of `job` only, when given); None if squeue failed."""
    command = ["squeue", "-h", "-a", "-o", "%A %i %T"] + (["-j", job] if job else [])
    try:
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode != 0:
        return [] if job and "Invalid job id" in out.stderr else None
    rows = (line.split() for line in out.stdout.splitlines())
    return [QueuedJob(*r) for r in rows if len(r) == 3]


class SlurmJobs:
    """Which SLURM jobs are running, from one cached `squeue` (None when it can't be asked)."""

    def __init__(self, cache_s: float = SQUEUE_CACHE_S):
        self.cache_s = cache_s
        self._at = -1e18
        self._running: set[str] | None = None

    def running(self) -> set[str] | None:
        if time.monotonic() - self._at < self.cache_s:
            return self._running
        self._at = time.monotonic()
        jobs = read_queue()
        self._running = None if jobs is None else {j.job_id for j in jobs if j.running}
        return self._running
