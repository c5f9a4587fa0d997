"""Ray backend: long-lived shard actors, dynamic dispatch, retries of shards whose worker died.

- One actor per GPU (or per `gpus_per_worker` fraction), else CPU actors of `threads` threads.
- Each actor loads the model once and runs many shards; results are small (data go to the store).
- At most `max_in_flight` shards are queued per actor, so the driver never holds all the work.
- A shard whose actor or node died is retried on a fresh actor, up to `max_retries` times.
  A shard that raised (e.g. non-finite CEs) is reported with its error and not retried.
"""

from __future__ import annotations

import collections
import os
from typing import Sequence

from cejobs.backends.base import OnResult, RunReport
from cejobs.tasks import ShardResult, ShardTask

DASHBOARD_HOST = "127.0.0.1"  # never expose Ray's dashboard beyond this host


class ShardActor:
    """Wrapped by ray.remote at run time (no import-time Ray)."""

    def __init__(self, task: ShardTask, threads: int):
        import torch

        if threads:
            torch.set_num_threads(threads)
        from cejobs.workers import make_worker

        self.worker = make_worker(task)

    def run(self, shard: int) -> ShardResult:
        from cejobs.tasks import run_shard_safely

        return run_shard_safely(self.worker, shard)


def connect(address: str | None, log_to_driver: bool = False) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS); with neither, start a local Ray."""
    import ray

    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=log_to_driver, logging_level="WARNING")
    else:
        ray.init(include_dashboard=False, log_to_driver=log_to_driver, logging_level="WARNING",
                 dashboard_host=DASHBOARD_HOST)


class RayBackend:
    def __init__(
        self,
        address: str | None = None,  # ray cluster address; None: RAY_ADDRESS or a local Ray
        workers: int = 0,  # 0: one per GPU, else one per `threads` CPUs
        threads: int = 1,  # torch threads (and Ray CPUs) of a CPU actor
        gpus_per_worker: float = 1.0,  # fractions share a GPU
        max_in_flight: int = 2,  # shards queued per actor
        max_retries: int = 3,  # retries of a shard after its worker died
    ):
        self.address, self.workers, self.threads = address, workers, max(1, threads)
        self.gpus_per_worker, self.max_in_flight = gpus_per_worker, max(1, max_in_flight)
        self.max_retries = max_retries

    @classmethod
    def from_config(cls, config) -> "RayBackend":
        return cls(
            address=config.ray_address, workers=config.workers, threads=config.threads or 1,
            gpus_per_worker=config.gpus_per_worker, max_in_flight=config.max_in_flight or 2,
            max_retries=config.max_retries,
        )

    def _actor_options(self) -> tuple[int, dict]:
        import ray

        resources = ray.cluster_resources()
        gpus = resources.get("GPU", 0)
        if gpus:
            count = self.workers or max(1, int(gpus / self.gpus_per_worker))
            return count, dict(num_gpus=self.gpus_per_worker, num_cpus=1)
        count = self.workers or max(1, int(resources.get("CPU", 1) // self.threads))
        return count, dict(num_cpus=self.threads)

    def run(self, task: ShardTask, shards: Sequence[int], on_result: OnResult) -> RunReport:
        import ray
        from ray.exceptions import RayActorError, RayError

        connect(self.address)
        count, options = self._actor_options()
        remote_cls = ray.remote(ShardActor).options(**options, max_concurrency=1)
        threads = 0 if "num_gpus" in options else self.threads
        make_actor = lambda: remote_cls.remote(task, threads)  # noqa: E731

        queue = collections.deque(shards)
        attempts: collections.Counter[int] = collections.Counter()
        report = RunReport()
        actors = [make_actor() for _ in range(min(count, len(queue)) or 1)]
        in_flight: dict = {}  # ObjectRef -> (actor slot, actor, shard)
        load = collections.Counter()  # actor slot -> shards queued
        replacements_left = len(actors) * (self.max_retries + 1)

        def submit():
            for slot, actor in enumerate(actors):
                while queue and load[slot] < self.max_in_flight:
                    shard = queue.popleft()
                    in_flight[actor.run.remote(shard)] = (slot, actor, shard)
                    load[slot] += 1

        submit()
        while in_flight:
            [ref], _ = ray.wait(list(in_flight), num_returns=1)
            slot, actor, shard = in_flight.pop(ref)
            load[slot] -= 1
            try:
                result = ray.get(ref)
            except (RayActorError, RayError) as e:  # the worker process or its node died
                attempts[shard] += 1
                error = f"worker lost ({type(e).__name__}): {str(e).splitlines()[0][:300]}"
                if attempts[shard] <= self.max_retries and replacements_left > 0:
                    queue.appendleft(shard)
                else:
                    report.failed[shard] = error
                    on_result(ShardResult(shard, error=error))
                if isinstance(e, RayActorError) and actors[slot] is actor:
                    ray.kill(actor, no_restart=True)
                    actors[slot] = make_actor()  # a fresh actor, placed wherever Ray can
                    replacements_left -= 1
                submit()
                continue
            on_result(result)
            if result.ok:
                report.done.append(shard)
            else:
                report.failed[shard] = result.error
            submit()
        for actor in actors:
            ray.kill(actor, no_restart=True)
        return report
