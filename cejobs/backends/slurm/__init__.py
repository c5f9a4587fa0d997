"""SLURM backend: a submitit job array of claim-loop workers; progress read from the store.

- `map_array` submits `workers` array tasks (default: one per pending shard, at most
  `array_parallelism`), each with the partition, GPUs (`--gres=gpu:N`), CPUs, memory and time
  limit of the config, and logs under `--slurm-log-dir` (default `<store>.logs`).
- Each task runs `loop.claim_loop`: it claims shards from the store until none is
  left, so the tasks share the work dynamically and a re-run finishes what is left.
- The driver polls the store's done flags (not SLURM accounting, which many clusters lack)
  and turns newly done shards into results for the progress bar. It returns when every shard
  is done, or when no task of the array is left in the queue.
- Time limits and preemption: submitit sends SIGUSR2 before the limit (`signal_delay_s`). The
  task abandons its running shard (claim released, not done) and requeues itself as an sbatch
  array task does (requeue.py, at most `slurm_max_timeouts` times); the requeued task runs the
  same pickled callable again and continues from the store (docs/operations.md).
"""

from __future__ import annotations

import logging
import signal
import subprocess
import time
import uuid
from pathlib import Path
from typing import Sequence

import numpy as np

from cejobs.backends.base import OnResult, RunReport
from cejobs.backends.slurm.squeue import FINAL_STATES, read_queue
from cejobs.jobs.config import Resources
from cejobs.jobs.results import ShardResult
from cejobs.jobs.tasks import ShardTask

log = logging.getLogger(__name__)

SIGNAL_DELAY_S = 120  # SIGUSR2 this long before the time limit


class ClaimLoopJob:
    """The callable each array task runs: the claim loop. On SIGUSR2 the task abandons its
    running shard, then requeues itself (requeue.py); submitit runs this same pickled object
    again when the task restarts, and it continues from the store."""

    def __init__(self, task: ShardTask, run: str, lease_s: float, max_requeues: int):
        self.task, self.run, self.lease_s = task, run, lease_s
        self.max_requeues = max_requeues

    def __call__(self, index: int):
        from cejobs.backends.slurm.claims import Owner
        from cejobs.backends.slurm.loop import Stopper, claim_loop
        from cejobs.backends.slurm.requeue import requeue_self

        # SIGUSR2 is ours (it replaces submitit's handler). SIGTERM stays submitit's: it is
        # ignored, as submitit expects SIGUSR2 to follow it on preemption.
        stopper = Stopper().install((signal.SIGUSR2,))
        report = claim_loop(self.task, owner=Owner.current(self.run), lease_s=self.lease_s,
                            stopper=stopper, start=index)
        if report.interrupted and stopper.reason == "SIGUSR2":
            requeue_self(self.max_requeues)
        return {"done": report.done, "failed": report.failed, "interrupted": report.interrupted}



def check_partition_gpus(sinfo: str, partition: str | None, gpus: int) -> None:
    """ConfigError unless `partition` (None: the default one, marked `*`) has nodes with GPU
    gres, from `sinfo -h -o "%P|%G"` output (one line per partition and gres, "(null)" for
    none)."""
    from cejobs.errors import ConfigError

    rows = [line.strip().split("|", 1) for line in sinfo.splitlines() if "|" in line]
    names = sorted({name.rstrip("*") for name, _ in rows})
    if partition is None:
        rows = [(name, gres) for name, gres in rows if name.endswith("*")]
    else:
        rows = [(name, gres) for name, gres in rows if name.rstrip("*") == partition]
        if not rows:
            raise ConfigError(f"no SLURM partition {partition!r} (sinfo lists "
                              f"{', '.join(names) or 'none'})")
    if rows and not any("gpu" in gres for _, gres in rows):
        name = rows[0][0].rstrip("*")
        raise ConfigError(f"--slurm-gpus {gpus}, but the SLURM partition {name} has no GPUs "
                          f"(gres {', '.join(sorted({g for _, g in rows}))}); use "
                          f"--slurm-gpus 0 for CPU tasks, or --partition with GPU nodes")


def _array_states(array_id: str) -> dict[str, str] | None:
    """Task name -> state of the array's tasks still known to SLURM; None if squeue failed."""
    jobs = read_queue(array_id)
    return None if jobs is None else {j.name: j.state for j in jobs}


class SlurmBackend:
    def __init__(
        self,
        log_dir: str | None = None,  # submitit folder; None: <store>.logs
        workers: int = 0,  # array tasks; 0: one per pending shard, at most array_parallelism
        partition: str | None = None,  # SLURM partition; None: the cluster's default
        gpus: int = 1,  # GPUs per task, as --gres=gpu:N (0: none)
        cpus: int = 4,  # CPUs per task (also its torch threads unless config.threads is set)
        mem_gb: int = 16,  # memory per task
        timeout_min: int = 240,  # time limit per task; a requeued task gets it again
        array_parallelism: int = 64,  # tasks running at once at most
        max_retries: int = 3,  # retries of a shard whose worker was lost (loop.py)
        max_timeouts: int = 1000,  # requeues of a task (time-out, preemption) at most
        lease_s: float = 600.0,  # claim heartbeat age after which a claim is stale
        poll_s: float = 3.0,  # how often the driver reads the store and the queue
    ):
        self.log_dir, self.workers, self.partition = log_dir, workers, partition
        self.gpus, self.cpus, self.mem_gb, self.timeout_min = gpus, cpus, mem_gb, timeout_min
        self.array_parallelism, self.max_retries = max(1, array_parallelism), max_retries
        self.max_timeouts, self.lease_s, self.poll_s = max_timeouts, lease_s, poll_s

    @classmethod
    def from_config(cls, config: Resources) -> SlurmBackend:
        return cls(log_dir=config.slurm_log_dir, workers=config.workers,
                   partition=config.partition, gpus=config.slurm_gpus, cpus=config.slurm_cpus,
                   mem_gb=config.slurm_mem_gb, timeout_min=config.timeout_min,
                   array_parallelism=config.array_parallelism,
                   max_retries=config.max_retries, max_timeouts=config.slurm_max_timeouts)

    def preflight(self) -> None:
        """Before the store is touched: tasks that ask for GPUs (`--slurm-gpus`) need a
        partition (the given one, else the default) whose nodes have GPU gres, read with
        `sinfo`. Where sinfo does not answer, sbatch reports its own errors at submission."""
        if not self.gpus:
            return
        try:
            r = subprocess.run(["sinfo", "-h", "-o", "%P|%G"], capture_output=True, text=True,
                               timeout=30)
        except (OSError, subprocess.TimeoutExpired):
            return
        if r.returncode == 0:
            check_partition_gpus(r.stdout, self.partition, self.gpus)

    def _executor(self, folder: Path, name: str):
        import submitit

        executor = submitit.AutoExecutor(folder=folder, cluster="slurm")
        params = dict(name=name, timeout_min=self.timeout_min, cpus_per_task=self.cpus,
                      mem_gb=self.mem_gb, slurm_array_parallelism=self.array_parallelism,
                      slurm_signal_delay_s=SIGNAL_DELAY_S,
                      slurm_additional_parameters={"requeue": True})
        if self.partition:
            params["slurm_partition"] = self.partition
        if self.gpus:
            params["slurm_gres"] = f"gpu:{self.gpus}"
        executor.update_parameters(**params)
        return executor

    def run(self, task: ShardTask, shards: Sequence[int], on_result: OnResult) -> RunReport:
        from cejobs.backends.slurm.claims import ClaimBoard, Owner, claims_root, remove_claims
        from cejobs.jobs.kinds import pending_shards
        from cejobs.store.store import CEStore

        job = task.job
        store = CEStore.open(task.store)
        # the store is a folder (check_slurm_store); its logs go beside it
        folder = Path(self.log_dir or f"{store.storage.local_folder}.logs")
        run = f"submitit-{uuid.uuid4().hex[:12]}"
        count = self.workers or min(len(shards), self.array_parallelism)
        executor = self._executor(folder, f"cejobs-{task.kind}")
        loop = ClaimLoopJob(task, run, self.lease_s, self.max_timeouts)
        jobs = executor.map_array(loop, list(range(count)))
        array_id = jobs[0].job_id.split("_")[0]
        log.info(f"submitted array job {array_id} ({count} task(s)); logs in {folder}; "
                 f"watch with: squeue -j {array_id}")

        board = ClaimBoard(claims_root(store.storage, job.namespace), Owner.current(run))
        layout = store.layout
        wanted = set(shards)
        report = RunReport()
        reported: set[int] = set()
        try:
            ended_polls = 0
            while True:
                eligible, done = job.eligible_and_done(store, task)
                new = sorted(s for s in wanted - reported if done[s])
                if new:
                    started = store.read_rows(f"{job.timing_prefix(task)}/started_at")
                    finished = store.read_rows(f"{job.timing_prefix(task)}/finished_at")
                for s in new:
                    rows = layout.rows(s)
                    ces = (rows.stop - rows.start) * layout.ces_per_source * job.ce_factor(task)
                    seconds = float(np.nan_to_num(finished[s] - started[s]))
                    on_result(ShardResult(s, ces=ces, seconds=seconds, worker=f"slurm {array_id}"))
                    reported.add(s)
                    report.done.append(s)
                if wanted <= reported:
                    break
                for s, error in board.given_up(run, self.max_retries).items():
                    if s in wanted - reported and s not in report.failed:
                        report.failed[s] = error
                        on_result(ShardResult(s, error=error))
                states = _array_states(array_id)
                live = states is None or any(st not in FINAL_STATES for st in states.values())
                ended_polls = 0 if live else ended_polls + 1
                if ended_polls >= 2:  # two polls apart, so a requeue in between is seen
                    break
                time.sleep(self.poll_s)
        except KeyboardInterrupt:
            log.warning(f"array job {array_id} keeps running; stop it with: scancel {array_id}")
            raise
        if wanted <= reported:  # tasks still pending would only find nothing to do
            subprocess.run(["scancel", "--state=PENDING", array_id], capture_output=True,
                           timeout=60)
            if not pending_shards(store, task):
                remove_claims(store.storage, job.namespace)
        else:
            errors = _job_errors(jobs) + [
                e[-1].strip().splitlines()[0] for _, e in sorted(board.failures(run).items())]
            for s in sorted(wanted - reported - set(report.failed)):
                why = f"not done when every task of array {array_id} had ended; logs: {folder}"
                if errors:
                    why += f"; a task's error: {errors[0]}"
                report.failed[s] = why
                on_result(ShardResult(s, error=why))
        return report


def _job_errors(jobs) -> list[str]:
    """Last lines of the errors that array tasks returned through submitit, if any."""
    out = []
    for job in jobs:
        try:
            if job.paths.result_pickle.exists():
                error = job.exception()
                if error is not None:
                    out.append(str(error).strip().splitlines()[-1][:300])
        except Exception:  # a result we can't read says nothing more
            continue
    return out
