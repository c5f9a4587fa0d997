"""The shard actor, and the shape and number of actors for a cluster's resources."""

from __future__ import annotations

import os
import socket
import sys
import threading
import time
from dataclasses import dataclass
from typing import Any, Sequence

from cejobs.jobs.results import ShardResult
from cejobs.jobs.tasks import ShardTask
from cejobs.threads import openmp_wait, undo_ray_nice


def actor_device(config_device: str, gpu_ids: Sequence[Any], cuda_available: bool) -> str:
    """The torch device of an actor, from the run's --device and the GPUs Ray gave it."""
    if config_device == "cpu" or not gpu_ids or not cuda_available:
        return "cpu" if config_device == "auto" else config_device  # cuda: fails loudly
    if os.environ.get("RAY_EXPERIMENTAL_NOSET_CUDA_VISIBLE_DEVICES"):  # sees every GPU
        return f"cuda:{gpu_ids[0]}"
    return "cuda"  # Ray set CUDA_VISIBLE_DEVICES to this actor's GPU(s)


def fence_seconds(env=os.environ) -> float:
    """How long an actor may be cut off from the head before it exits: half the time Ray's
    GCS takes at least to declare a silent node dead (health_check_period_ms x
    health_check_failure_threshold, Ray's defaults 3000 and 5), at least 1 s."""
    period_ms = float(env.get("RAY_health_check_period_ms", 3000))
    threshold = float(env.get("RAY_health_check_failure_threshold", 5))
    return max(1.0, period_ms * threshold / 2000.0)


class Fence:
    """Self-fencing: a daemon thread that connects to the head's GCS every `period` seconds;
    after `limit` seconds without a connection the actor's process exits. The driver only
    requeues an actor's shards once Ray has declared it or its node dead, which takes longer,
    so a cut-off actor never writes a shard while its replacement does."""

    def __init__(self, gcs_address: str, where: str, limit: float, period: float = 0.5):
        host, _, port = gcs_address.rpartition(":")
        self.target, self.where, self.limit, self.period = (host, int(port)), where, limit, period
        threading.Thread(target=self._watch, name="cejobs-fence", daemon=True).start()

    def _reachable(self) -> bool:
        try:
            with socket.create_connection(self.target, timeout=max(self.period, 1.0)):
                return True
        except OSError:
            return False

    def _watch(self) -> None:
        last = time.monotonic()
        while True:
            time.sleep(self.period)
            if self._reachable():
                last = time.monotonic()
            elif time.monotonic() - last > self.limit:
                print(f"ray: worker {self.where} cannot reach the head at "
                      f"{self.target[0]}:{self.target[1]} for {self.limit:.1f} s; exiting so "
                      f"that its shards run elsewhere", file=sys.stderr, flush=True)
                os._exit(75)


class ShardActor:
    """Wrapped by ray.remote at run time (no import-time Ray)."""

    def __init__(self, task: ShardTask, threads: int, use_gpu: bool, inputs=None,
                 driver_nice: int = 0):
        """inputs: the driver's WorkerInputs (checkpoint bytes, dataset), resolved by Ray from
        its object store, so the actor reads nothing from the driver's disk. driver_nice: the
        driver's niceness, which the actor takes (cejobs/threads.py)."""
        import ray
        import torch

        from cejobs.hosts import worker_name

        torch.set_num_threads(threads)
        self.nice = undo_ray_nice(driver_nice)  # Ray's 15 starves CPU work on a shared node
        self.worker, self.error = None, None
        self.gpu_ids = [str(g) for g in ray.get_gpu_ids()] if use_gpu else []
        self.device = actor_device(task.config.device, self.gpu_ids,
                                   torch.cuda.is_available())
        try:
            self.worker = task.job.make_worker(task, self.device, inputs)
        except Exception as e:  # reported by ready(): the backend retires this actor
            from cejobs.errors import StoreError

            hint = (" (the store must be on storage every node shares)"
                    if isinstance(e, StoreError) else "")
            self.error = f"{type(e).__name__}: {e}{hint}"
        self.name = worker_name()
        if ray.is_initialized():  # in a Ray worker (tests also build one in-process)
            Fence(ray.get_runtime_context().gcs_address, self.name, fence_seconds())

    def ready(self) -> dict[str, Any]:
        import torch

        return dict(worker=self.name, device=self.device, gpus=self.gpu_ids,
                    threads=torch.get_num_threads(), openmp=openmp_wait(), nice=self.nice,
                    error=self.error)

    def run(self, shard: int) -> ShardResult:
        from cejobs.jobs.results import run_shard_safely

        if self.worker is None:
            return ShardResult(shard, error=str(self.error), worker=self.name)
        return run_shard_safely(self.worker, shard)


@dataclass(frozen=True)
class ActorPlan:
    count: int  # actors to start
    options: dict[str, float]  # ray.remote resource options of each actor
    threads: int  # torch threads inside each actor
    use_gpu: bool
    fits: int  # actors of this shape the cluster holds right now

    def resources(self) -> str:
        names = {"num_gpus": "GPU", "num_cpus": "CPU"}
        return ", ".join(f"{names[k]} {v:g}" for k, v in self.options.items())

    def describe(self) -> str:
        res = self.resources()
        kind = "GPU" if self.use_gpu else "CPU"
        extra = (f"; the cluster has room for {self.fits} now, the rest start when resources "
                 f"free up" if self.count > self.fits else "")
        return f"{self.count} {kind} worker(s), {res}, {self.threads} thread(s) each{extra}"


def plan_actors(resources: dict[str, float], *, workers: int, threads: int,
                gpus_per_worker: float, device: str, shards: int) -> ActorPlan:
    """How many actors of which shape, from the cluster's resources and the run's flags."""
    from cejobs.errors import ConfigError

    gpus, cpus = resources.get("GPU", 0.0), resources.get("CPU", 0.0)
    if device.startswith("cuda") and not gpus:
        raise ConfigError(f"--device {device}, but the Ray cluster has no GPUs; use --device "
                          f"auto or cpu")
    use_gpu = gpus > 0 and device != "cpu"
    if use_gpu:
        threads = threads or 1
        fits = int(gpus / gpus_per_worker + 1e-9)
        options = dict(num_gpus=gpus_per_worker, num_cpus=float(threads))
    else:
        threads = threads or 1
        fits = int(cpus // threads)
        options = dict(num_cpus=float(threads))
    count = min(workers or max(fits, 1), max(shards, 1))
    return ActorPlan(count, options, threads, use_gpu, fits)
