"""In-process backend: one worker, shards in order. For debugging, tests and notebooks."""

from __future__ import annotations

import logging
from typing import Sequence

from cejobs.backends.base import OnResult, RunReport
from cejobs.devices import resolve_device
from cejobs.jobs.config import Resources
from cejobs.jobs.results import run_shard_safely
from cejobs.jobs.tasks import ShardTask
from cejobs.threads import openmp_wait, set_threads

log = logging.getLogger(__name__)


class LocalBackend:
    def __init__(self, threads: int = 0, device: str = "auto"):
        self.threads = threads  # torch threads; 0: every available CPU
        self.device = device  # the workers' device flag (the worker resolves it again)

    @classmethod
    def from_config(cls, resources: Resources) -> LocalBackend:
        return cls(threads=resources.threads, device=resources.device)

    def preflight(self) -> None:
        """The device exists (ConfigError otherwise)."""
        resolve_device(self.device)

    def run(self, task: ShardTask, shards: Sequence[int], on_result: OnResult) -> RunReport:
        threads = set_threads(self.threads)
        log.info(f"local: worker of {threads} thread(s), OpenMP {openmp_wait()}")
        worker = task.job.make_worker(task)
        report = RunReport()
        for shard in shards:
            result = run_shard_safely(worker, shard)
            on_result(result)
            if result.ok:
                report.done.append(shard)
            else:
                report.failed[shard] = result.error
        return report
