"""The claim loop that every SLURM array task runs, and how it stops on a signal.

A task claims a shard that is not done (claims.py), runs it, releases the claim, and goes on
until nothing is left to claim. What a shard is, which shards may run and which are done,
comes from the task's job kind (cejobs.jobs.kinds).

Attempts (--max-retries, as on Ray): a shard that raised is not retried in this run; a shard
whose worker was lost (its claim went stale and was taken over) or whose worker could not
start is retried until it has failed more than max_retries times. A resubmission (a new run)
tries every shard not done again.

The watchdog (--shard-timeout, cejobs.backends.watchdog): while a shard timeout applies, the
heartbeat beats at least four times per timeout, a claim whose heartbeat is older than the
timeout is stale (its owner hung), and a task that finds every pending shard claimed keeps
watching those claims instead of ending, so that one of them is taken over when its owner
hangs. A task whose claim was taken over while it computed (it was stopped, then continued)
abandons that shard (`Abandoned`, raised by SIGALRM from the heartbeat thread) unless it is
already committing it.
"""

from __future__ import annotations

import contextlib
import math
import signal
import threading
import time
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Iterable

from cejobs.backends.slurm.claims import (HEARTBEAT_S, LEASE_S, ClaimBoard, Heartbeat, Owner,
                                          claims_root, log)
from cejobs.backends.watchdog import shard_timeout

if TYPE_CHECKING:  # kept light: the summary step runs without torch
    from cejobs.jobs.tasks import ShardTask


# ---------------------------------------------------------------------------- stopping
class Interrupted(BaseException):
    """Raised in the main thread by a stop signal while a shard computes. A BaseException,
    so that run_shard_safely does not turn it into a failed shard."""


class Abandoned(Interrupted):
    """Raised in the main thread when the claim of the shard it computes was taken over
    (its owner looked hung): the shard is left to the task that took it."""


class Stopper:
    """Turns stop signals (SIGUSR2: time limit or preemption; SIGTERM: cancel) into a stop.

    Between shards the loop just ends. While a shard computes, Interrupted is raised to
    abandon it: its claim is released and it is not done. While a shard commits
    (`cejobs.store.commit.COMMIT` is active), the commit finishes first and the loop ends after it.
    """

    def __init__(self) -> None:
        self.reason: str | None = None
        self._computing = False

    def install(self, signals: Iterable[int]) -> "Stopper":
        for sig in signals:
            signal.signal(sig, self._handle)
        return self

    def request(self, reason: str) -> None:
        self.reason = self.reason or reason

    def _handle(self, signum: int, frame) -> None:
        from cejobs.store.commit import COMMIT

        self.request(signal.Signals(signum).name)
        if self._computing and not COMMIT.active:
            self._computing = False
            raise Interrupted(self.reason)

    def abandon_on(self, sig: int = signal.SIGALRM) -> Callable[[int], bool] | None:
        """For Heartbeat(on_lost=...): a function that makes the main thread abandon the shard
        it computes (`sig` raises Abandoned there). None outside the main thread, where no
        signal handler can be set."""
        if threading.current_thread() is not threading.main_thread():
            return None

        def handle(signum, frame) -> None:
            from cejobs.store.commit import COMMIT

            if self._computing and not COMMIT.active:  # a commit in progress finishes
                self._computing = False
                raise Abandoned("claim taken over")

        signal.signal(sig, handle)
        main = threading.main_thread().ident

        def on_lost(shard: int) -> bool:
            if not self._computing:
                return False
            signal.pthread_kill(main, sig)
            return True
        return on_lost

    @contextlib.contextmanager
    def computing(self):
        if self.reason:
            raise Interrupted(self.reason)
        self._computing = True
        try:
            yield
        finally:
            self._computing = False


# ---------------------------------------------------------------------------- the loop
def _start_worker(task: ShardTask, threads: int, make_worker: Callable | None):
    from cejobs.threads import openmp_wait, set_threads

    threads = set_threads(threads)  # 0: the CPUs of this task (SLURM_CPUS_PER_TASK, affinity)
    log(f"worker of {threads} thread(s), OpenMP {openmp_wait()}")
    return (make_worker or task.job.make_worker)(task)


def _finished_seconds(store, task: ShardTask) -> list[float]:
    """How long each done shard took, from the store's timing arrays (every task's)."""
    prefix = task.job.timing_prefix(task)
    done = task.job.eligible_and_done(store, task)[1]
    took = store.read_rows(f"{prefix}/finished_at") - store.read_rows(f"{prefix}/started_at")
    return [float(t) for t, d in zip(took, done) if d and not math.isnan(t)]


@dataclass
class LoopReport:
    done: list[int] = field(default_factory=list)  # shards this loop finished
    failed: dict[int, str] = field(default_factory=dict)  # shard -> error, in this loop
    interrupted: str | None = None  # the stop signal's name, when stopped early


def claim_loop(
    task: ShardTask,
    owner: Owner | None = None,  # who claims; default: from the SLURM environment
    lease_s: float = LEASE_S,  # heartbeat age after which a claim is stale
    heartbeat_s: float = HEARTBEAT_S,  # heartbeat period
    stopper: Stopper | None = None,  # stop signals; None: run until no shard is left
    start: int = 0,  # where to start in the pending list (spreads the first claims)
    make_worker: Callable | None = None,  # task -> worker; default: the task's job kind's
) -> LoopReport:
    """Claim and run shards of `task` until none is left to claim; see the module doc."""
    from cejobs.jobs.kinds import pending_shards
    from cejobs.store.store import CEStore
    from cejobs.jobs.results import run_shard_safely

    owner = owner or Owner.current()
    stopper = stopper or Stopper()
    job, config = task.job, task.config
    store = CEStore.open(task.store)
    board = ClaimBoard(claims_root(store.storage, job.namespace), owner, lease_s)
    report = LoopReport()
    worker = None
    skip: set[int] = set()  # failed here: left to other tasks or a later run
    cleared = board.clear_own_leftovers()
    if cleared:
        log(f"released claims left by an earlier run of this job: shards {cleared}")
    heartbeat = Heartbeat(heartbeat_s, on_lost=stopper.abandon_on())
    watching = False  # said that we watch the claims of others
    try:
        while not stopper.reason:
            board.hung_s = timeout = shard_timeout(config.shard_timeout,
                                                   _finished_seconds(store, task))
            heartbeat.interval_s = min(heartbeat_s, timeout / 4) if timeout else heartbeat_s
            given_up = board.given_up(owner.run, config.max_retries)
            pending = [s for s in pending_shards(store, task) if s not in skip and
                       s not in given_up]
            if not pending:
                break
            i = start % len(pending)
            got = board.acquire(pending[i:] + pending[:i])
            if got is None and timeout is None:
                log(f"{len(pending)} shard(s) not done, all claimed by running tasks")
                break
            if got is None:  # the watchdog: one of them may hang
                if not watching:
                    log(f"{len(pending)} shard(s) not done, all claimed by running tasks; "
                        f"watching their claims (shard timeout {timeout:.0f} s)")
                watching = True
                time.sleep(min(5.0, timeout / 4))
                continue
            claim, stale = got
            shard = claim.shard
            if stale:
                log(f"took over shard {shard}: {stale}")
                board.record_failure(shard, f"worker lost: {stale}")
            heartbeat.lease = claim
            try:
                if job.eligible_and_done(store, task)[1][shard]:
                    continue  # finished by another task between our look and our claim
                log(f"claimed shard {shard} ({owner.label})")
                try:
                    with stopper.computing():
                        if worker is None:  # only once there is a shard: loads the models
                            worker = _start_worker(task, config.threads, make_worker)
                        result = run_shard_safely(worker, shard)
                except Abandoned:
                    log(f"shard {shard} abandoned: its claim was taken over (hung?); the "
                        f"task that took it runs it")
                    continue
                except Interrupted:
                    report.interrupted = stopper.reason
                    log(f"shard {shard} abandoned ({stopper.reason}): not done, claim released")
                    break
                except Exception as e:  # worker construction failed: no shard can run here
                    error = f"{type(e).__name__}: {e}\n{traceback.format_exc(limit=4)}"
                    board.record_failure(shard, error)
                    report.failed[shard] = error
                    log(f"shard {shard} failed: cannot start a worker: {type(e).__name__}: {e}")
                    break
                if result.ok:
                    report.done.append(shard)
                    log(f"shard {shard} done in {result.seconds:.1f} s ({result.ces} CEs)")
                else:
                    board.record_failure(shard, result.error, raised=True)
                    report.failed[shard] = result.error
                    skip.add(shard)
                    log(f"shard {shard} failed: {result.error.strip().splitlines()[0]}")
            finally:
                heartbeat.lease = None
                claim.release()
        if stopper.reason and report.interrupted is None:
            report.interrupted = stopper.reason
            log(f"stopping ({stopper.reason}) between shards")
    finally:
        heartbeat.close()
    return report
