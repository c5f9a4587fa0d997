"""The SLURM environment of this process, read in one place: the variables slurmd sets in a
batch job (sbatch(1), "OUTPUT ENVIRONMENT VARIABLES"). Outside a job every field is None.

Used by the CPU count (cejobs.threads), claim owners, the summary step and the requeue of an
array task (cejobs.backends.slurm).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Mapping


@dataclass(frozen=True)
class SlurmEnv:
    job_id: str | None = None  # SLURM_JOB_ID: unique per array task
    array_job_id: str | None = None  # SLURM_ARRAY_JOB_ID: the array's own id
    array_task_id: str | None = None  # SLURM_ARRAY_TASK_ID: this task's index in the array
    restart_count: int = 0  # SLURM_RESTART_COUNT: grows on every requeue
    cpus_per_task: int | None = None  # SLURM_CPUS_PER_TASK: this task's CPU allocation
    name: str | None = None  # SLURM_JOB_NAME
    partition: str | None = None  # SLURM_JOB_PARTITION
    account: str | None = None  # SLURM_JOB_ACCOUNT
    submit_dir: str | None = None  # SLURM_SUBMIT_DIR: where sbatch ran

    @property
    def array(self) -> str | None:
        """The job a step after the whole array waits on: the array's id, else this job's."""
        return self.array_job_id or self.job_id

    @property
    def task(self) -> str | None:
        """"<array job>_<task index>", the name squeue and scontrol know an array task by."""
        if self.array_job_id and self.array_task_id:
            return f"{self.array_job_id}_{self.array_task_id}"
        return None


def _count(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() and int(text) > 0 else None


def current_job(env: Mapping[str, str] | None = None) -> SlurmEnv:
    """The SLURM job this process runs in (every field None outside one)."""
    env = os.environ if env is None else env
    return SlurmEnv(
        job_id=env.get("SLURM_JOB_ID") or None,
        array_job_id=env.get("SLURM_ARRAY_JOB_ID") or None,
        array_task_id=env.get("SLURM_ARRAY_TASK_ID") or None,
        restart_count=int(env.get("SLURM_RESTART_COUNT") or 0),
        cpus_per_task=_count(env.get("SLURM_CPUS_PER_TASK")),
        name=env.get("SLURM_JOB_NAME") or None,
        partition=env.get("SLURM_JOB_PARTITION") or None,
        account=env.get("SLURM_JOB_ACCOUNT") or None,
        submit_dir=env.get("SLURM_SUBMIT_DIR") or None,
    )


def submission_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """This environment minus the job's own SLURM_* variables (SLURM_CONF kept), so that a
    job submitted from inside a task does not inherit the task's identity."""
    env = os.environ if env is None else env
    return {k: v for k, v in env.items() if not k.startswith("SLURM_") or k == "SLURM_CONF"}
