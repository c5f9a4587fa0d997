"""Ray backend: long-lived shard actors, dynamic dispatch, retries of shards whose worker died.

- Joins the cluster it runs in (`--ray-address`, else RAY_ADDRESS as set by `ray job submit`,
  else a cluster started with `ray start` on this node), or starts a private local Ray.
- One actor per GPU (or per `gpus_per_worker` fraction of one); on a cluster without GPUs, or
  with `--device cpu`, CPU actors of `threads` torch threads (and as many Ray CPUs) each.
- Each actor loads the model once, reports ready, then runs shards one at a time. Shards go to
  ready actors only, at most `max_in_flight` queued per actor, so fast actors take more and an
  actor still waiting for resources holds none. Results are small: the data go to the store.
- An actor or node that dies loses the shard it was running: that shard is retried on a fresh
  actor, placed wherever Ray finds room, at most `max_retries` times; shards merely queued
  behind it are requeued without counting a retry. A shard that raised (non-finite CEs, a bad
  input) is reported with its error and not retried: its numbers depend only on the seed and
  its position, so a retry would raise again. A resume runs it again.
- A shard that runs longer than the shard timeout (`--shard-timeout`, else derived from the
  finished shards: cejobs.backends.watchdog) is hung: its actor is killed and the shard
  retried like one whose worker died. An actor cut off from the head exits by itself before
  Ray declares its node dead (actors.py, `Fence`), so a shard is never run by a lost actor
  and its replacement at once.
- An actor whose start-up raised (store not visible on its node, checkpoint differs) is
  retired with that error; when no actor is left, the remaining shards fail with it.
"""

from __future__ import annotations

import collections
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Sequence

from cejobs.backends.base import OnResult, RunReport
from cejobs.backends.ray.actors import ActorPlan, ShardActor, plan_actors
from cejobs.backends.ray.cluster import check_address, connect, log, loss_reason, one_line
from cejobs.backends.watchdog import describe, shard_timeout
from cejobs.jobs.config import Resources
from cejobs.jobs.results import ShardResult
from cejobs.jobs.tasks import ShardTask
from cejobs.threads import current_nice

WAIT_LOG_SECONDS = 60.0  # how often to say that no actor has started yet


@dataclass
class _Slot:
    """One actor position: replaced in place when its actor dies."""

    actor: Any
    ready_ref: Any = None  # ObjectRef of ready() while starting
    ready: bool = False
    info: dict[str, Any] = field(default_factory=dict)
    outstanding: collections.deque = field(default_factory=collections.deque)  # (ref, shard)
    retired: bool = False
    started: float | None = None  # monotonic time its running shard started


class RayBackend:
    def __init__(
        self,
        address: str | None = None,  # ray cluster address; None: RAY_ADDRESS or a local Ray
        workers: int = 0,  # 0: one per GPU (per gpus_per_worker), else one per `threads` CPUs
        threads: int = 1,  # torch threads (and Ray CPUs) of an actor
        gpus_per_worker: float = 1.0,  # fractions share a GPU
        max_in_flight: int = 2,  # shards queued per actor
        max_retries: int = 3,  # retries of a shard after its worker died
        device: str = "auto",  # cpu: CPU actors even on a GPU cluster
        shard_timeout: float = 0.0,  # hung after this many seconds (0: from finished shards)
    ):
        self.address, self.workers, self.threads = address, workers, max(1, threads)
        self.gpus_per_worker, self.max_in_flight = gpus_per_worker, max(1, max_in_flight)
        self.max_retries, self.device = max_retries, device
        self.shard_timeout = shard_timeout

    @classmethod
    def from_config(cls, config: Resources) -> RayBackend:
        return cls(
            address=config.ray_address, workers=config.workers, threads=config.threads or 1,
            gpus_per_worker=config.gpus_per_worker, max_in_flight=config.max_in_flight or 2,
            max_retries=config.max_retries, device=config.device,
            shard_timeout=config.shard_timeout,
        )

    def preflight(self) -> None:
        """Before the store is touched: a given address must answer (bounded time); with
        `--device cuda`, the cluster is joined (or the local Ray started) and must have GPUs."""
        check_address(self.address)
        if self.device.startswith("cuda"):
            import ray

            self._how = connect(self.address)
            if not ray.cluster_resources().get("GPU", 0):
                from cejobs.errors import ConfigError

                raise ConfigError(f"--device {self.device}, but the Ray cluster has no GPUs; "
                                  f"use --device auto or cpu")

    def run(self, task: ShardTask, shards: Sequence[int], on_result: OnResult) -> RunReport:
        import ray

        how = getattr(self, "_how", None) or connect(self.address)
        resources = ray.cluster_resources()
        plan = plan_actors(resources, workers=self.workers, threads=self.threads,
                           gpus_per_worker=self.gpus_per_worker, device=self.device,
                           shards=len(shards))
        nodes = sum(1 for n in ray.nodes() if n.get("Alive"))
        log(f"{how}: {nodes} node(s), CPU {resources.get('CPU', 0):g}, "
            f"GPU {resources.get('GPU', 0):g}; starting {plan.describe()}")
        # checkpoints and dataset travel once through Ray's object store (worker_inputs.py)
        run = _Run(self, task, plan, on_result, ray.put(task.job.inputs(task)))
        try:
            return run.loop(shards)
        finally:
            run.shutdown()


class _Run:
    """The dispatch loop of one `RayBackend.run`."""

    def __init__(self, backend: RayBackend, task: ShardTask, plan: ActorPlan,
                 on_result: OnResult, inputs_ref: Any = None):
        import ray

        # No per-actor runtime_env: an actor may then start in a worker process Ray has
        # already started. Its thread count is set by torch.set_num_threads in the actor.
        self.remote_cls = ray.remote(ShardActor).options(**plan.options, max_concurrency=1,
                                                          max_restarts=0)
        self.backend, self.task, self.plan, self.on_result = backend, task, plan, on_result
        self.inputs_ref = inputs_ref  # ObjectRef of WorkerInputs; Ray resolves it per actor
        self.driver_nice = current_nice()  # the actors take it (cejobs/threads.py)
        self.report = RunReport()
        self.queue: collections.deque[int] = collections.deque()
        self.attempts: collections.Counter[int] = collections.Counter()
        self.refs: dict[Any, tuple[int, int | None]] = {}  # ref -> (slot, shard or None=ready)
        self.slots: list[_Slot] = []
        self.replacements_left = plan.count * max(backend.max_retries, 1)
        self.last_error = ""
        self.per_worker: collections.Counter[str] = collections.Counter()
        self.seconds: list[float] = []  # times of the finished shards (the watchdog)

    # ------------------------------------------------------------------ actors
    def _start(self, index: int | None = None) -> None:
        actor = self.remote_cls.remote(self.task, self.plan.threads, self.plan.use_gpu,
                                       self.inputs_ref, self.driver_nice)
        slot = _Slot(actor, ready_ref=actor.ready.remote())
        if index is None:
            self.slots.append(slot)
            index = len(self.slots) - 1
        else:
            self.slots[index] = slot
        self.refs[slot.ready_ref] = (index, None)

    def _retire(self, index: int, error: str) -> None:
        import ray

        slot = self.slots[index]
        slot.retired, slot.ready = True, False
        self.last_error = error
        ray.kill(slot.actor, no_restart=True)

    def _lost(self, index: int, error: BaseException | None, reason: str = "") -> None:
        """The actor of `index` (or its node) died, or hung (`error` None, `reason` says
        why): requeue its shards, kill it, replace it."""
        import ray

        slot = self.slots[index]
        reason = reason or loss_reason(error)
        slot.started = None
        lost = [shard for _, shard in slot.outstanding]
        for ref, _ in slot.outstanding:
            self.refs.pop(ref, None)
        slot.outstanding.clear()
        if slot.ready_ref is not None:
            self.refs.pop(slot.ready_ref, None)
        requeue = []
        if lost:  # the first was running; the others only waited behind it
            running = lost[0]
            self.attempts[running] += 1
            if self.attempts[running] > self.backend.max_retries:
                self._fail(running, f"worker lost {self.attempts[running]} time(s), retries "
                                    f"exhausted; last: {reason}")
            else:
                requeue.append(running)
            requeue += lost[1:]
        self.queue.extendleft(reversed(requeue))
        name = f"worker {index} on {slot.info.get('worker', '?')}"
        init_failed = bool(getattr(error, "actor_init_failed", False))
        ray.kill(slot.actor, no_restart=True)
        if init_failed or self.replacements_left <= 0:
            self._retire(index, f"worker could not start: {reason}" if init_failed else reason)
            log(f"{name} lost ({reason}); shards {requeue} requeued; not replaced")
            return
        self.replacements_left -= 1
        log(f"{name} lost ({reason}); shards {requeue} requeued; starting a replacement")
        self._start(index)

    # ------------------------------------------------------------------ shards
    def _fail(self, shard: int, error: str) -> None:
        self.report.failed[shard] = error
        self.on_result(ShardResult(shard, error=error))

    def _dispatch(self) -> None:
        """Fill ready actors level by level: each gets one shard before any gets two."""
        for level in range(self.backend.max_in_flight):
            for index, slot in enumerate(self.slots):
                if self.queue and slot.ready and len(slot.outstanding) <= level:
                    shard = self.queue.popleft()
                    if not slot.outstanding:  # runs now
                        slot.started = time.monotonic()
                    ref = slot.actor.run.remote(shard)
                    slot.outstanding.append((ref, shard))
                    self.refs[ref] = (index, shard)

    def _on_ready(self, index: int, ref) -> None:
        import ray
        from ray.exceptions import RayError

        slot = self.slots[index]
        slot.ready_ref = None
        try:
            info = ray.get(ref)
        except RayError as e:
            self._lost(index, e)
            return
        slot.info = info
        if info["error"]:
            self._retire(index, f"worker could not start on {info['worker']}: {info['error']}")
            log(f"{self.last_error}; retired")
            return
        slot.ready = True
        gpus = f", GPU {','.join(info['gpus'])}" if info["gpus"] else ""
        log(f"worker {index} ready on {info['worker']} (device {info['device']}{gpus}, "
            f"{info['threads']} thread(s), OpenMP {info['openmp']}, "
            f"nice {info['nice']})")
        if info.get("nice", 0) > self.driver_nice and info["device"] == "cpu":
            log(f"worker {index} runs at nice {info['nice']} (Ray's worker_niceness), the "
                f"driver at {self.driver_nice}: other processes on its node will starve it; "
                f"start Ray with RAY_worker_niceness={self.driver_nice}", logging.WARNING)

    def _on_result(self, index: int, shard: int, ref) -> None:
        import ray
        from ray.exceptions import RayActorError, RayError, RayTaskError

        slot = self.slots[index]
        try:
            result = ray.get(ref)
        except RayTaskError as e:  # raised past run_shard_safely (e.g. SystemExit): not retried
            slot.outstanding = collections.deque(o for o in slot.outstanding if o[0] != ref)
            self._fail(shard, one_line(e))
            return
        except (RayActorError, RayError) as e:  # the actor's process or its node died
            self._lost(index, e)
            return
        slot.outstanding = collections.deque(o for o in slot.outstanding if o[0] != ref)
        slot.started = time.monotonic() if slot.outstanding else None  # the next one runs
        self.on_result(result)
        if result.ok:
            self.seconds.append(result.seconds)
            self.report.done.append(shard)
            self.per_worker[result.worker] += 1
        else:
            self.report.failed[shard] = result.error

    # ------------------------------------------------------------------ watchdog
    def _timeout(self) -> float | None:
        return shard_timeout(self.backend.shard_timeout, self.seconds)

    def _wait_s(self) -> float:
        """Until the next thing to do: a log line, or the earliest running shard's deadline."""
        timeout = self._timeout()
        starts = [s.started for s in self.slots if s.started is not None and s.outstanding]
        if timeout is None or not starts:
            return WAIT_LOG_SECONDS
        return min(WAIT_LOG_SECONDS, max(0.1, min(starts) + timeout - time.monotonic() + 0.1))

    def _watchdog(self) -> bool:
        """Kill and replace every actor whose running shard is over the timeout."""
        timeout, now, fired = self._timeout(), time.monotonic(), False
        if timeout is None:
            return False
        for index, slot in enumerate(self.slots):
            if slot.started is None or not slot.outstanding or now - slot.started <= timeout:
                continue
            shard = slot.outstanding[0][1]
            self._lost(index, None, f"hung: shard {shard} ran {now - slot.started:.0f} s, "
                                    f"over the {describe(self.backend.shard_timeout, timeout)}")
            fired = True
        return fired

    def loop(self, shards: Sequence[int]) -> RunReport:
        import ray

        self.queue.extend(shards)
        for _ in range(self.plan.count):
            self._start()
        while self.queue or any(s.outstanding for s in self.slots):
            if not self.refs:  # every actor retired: nothing can run the rest
                for shard in list(self.queue):
                    self._fail(shard, self.last_error or "no worker left")
                self.queue.clear()
                break
            done, _ = ray.wait(list(self.refs), num_returns=1, timeout=self._wait_s())
            if self._watchdog():
                self._dispatch()
                continue
            if not done:
                if not any(s.ready for s in self.slots):
                    log(f"waiting for resources: 0 of {len(self.slots)} workers started "
                        f"(each needs {self.plan.resources()})")
                continue
            index, shard = self.refs.pop(done[0])
            if shard is None:
                self._on_ready(index, done[0])
            else:
                self._on_result(index, shard, done[0])
            self._dispatch()
        if self.per_worker:
            log("shards done per worker: " + ", ".join(
                f"{w} {n}" for w, n in sorted(self.per_worker.items())))
        return self.report

    def shutdown(self) -> None:
        import ray

        for slot in self.slots:
            ray.kill(slot.actor, no_restart=True)
