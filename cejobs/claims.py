"""Shard claims on shared storage, and the claim loop that SLURM array tasks run.

Work is split by the store, not by fixed slices: every task repeatedly claims a shard that
is not done, runs it (the shard writes its data, then its done flag), and releases the claim,
until nothing is left. A resubmitted array therefore finishes exactly what is left.

- A claim is the file `<store>/claims/<namespace>/<shard>`, made by hard-linking a complete
  temporary file to that name: atomic, and it fails when the name exists (O_EXCL semantics,
  also on NFS). Its JSON names the owner: SLURM job and array task, restart count, host, pid,
  run, and a token unique to the claim.
- While the shard runs, a heartbeat thread refreshes the claim's mtime.
- A claim is stale, and may be taken over, when its heartbeat is older than the lease, when
  its owner's SLURM job is no longer running (or is a later run of a requeued job), or when
  its owner process on this host is gone. A takeover renames the stale file away first, so
  only one taker wins.
- Claims only avoid duplicate work. Every CE depends only on the seed and its position, and
  chunk writes are atomic, so a shard that two tasks run by accident writes the same bytes.
- A shard that fails is recorded under `claims/<namespace>/failed/` and retried by other
  tasks of the same run, up to `max_attempts` times in all; a resubmission (a new run)
  retries it again.

The loop is generic over the task's kind: `WORK` says, per kind, which shards are eligible
and which are done, and under which namespace they are claimed.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import traceback
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

import numpy as np

if TYPE_CHECKING:  # kept light: claims are also used by processes that never load torch
    from cejobs.store import CEStore
    from cejobs.tasks import ShardTask

CLAIMS_DIR = "claims"
LEASE_S = 600.0  # a claim without a heartbeat for this long is stale
HEARTBEAT_S = 30.0  # how often a held claim's mtime is refreshed
SQUEUE_CACHE_S = 20.0  # how long one squeue answer is reused
# SLURM job states in which the job's processes may still be running.
ALIVE_STATES = frozenset({"RUNNING", "COMPLETING", "CONFIGURING", "SUSPENDED", "STOPPED",
                          "SIGNALING", "STAGE_OUT", "RESIZING"})


def log(message: str) -> None:
    """One timestamped line on stderr (the task's SLURM log)."""
    print(f"[{time.strftime('%H:%M:%S')}] cejobs: {message}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------- work per kind
def _generate_flags(store: CEStore, task: ShardTask) -> tuple[np.ndarray, np.ndarray]:
    done = store.done("shard")
    return np.ones_like(done), done


def _evaluate_flags(store: CEStore, task: ShardTask) -> tuple[np.ndarray, np.ndarray]:
    eligible = store.done("shard")  # only generated shards can be evaluated
    done = np.ones_like(eligible)
    for name in task.options["classifiers"]:
        done &= store.done(f"eval/{name}")
    return eligible, done


@dataclass(frozen=True)
class Work:
    namespace: str  # claims/<namespace>/<shard>
    flags: Callable[[CEStore, ShardTask], tuple[np.ndarray, np.ndarray]]  # (eligible, done)


WORK = {
    "generate": Work("shard", _generate_flags),
    "evaluate": Work("eval", _evaluate_flags),
}


def pending_shards(store: CEStore, task: ShardTask) -> list[int]:
    eligible, done = WORK[task.kind].flags(store, task)
    return [int(s) for s in np.flatnonzero(eligible & ~done)]


def claims_root(store_path: str | os.PathLike, namespace: str) -> Path:
    return Path(store_path) / CLAIMS_DIR / namespace


def remove_claims(store_path: str | os.PathLike, namespace: str) -> None:
    """Delete a finished namespace's claims and failure records (and `claims/` once empty)."""
    import shutil

    shutil.rmtree(claims_root(store_path, namespace), ignore_errors=True)
    with contextlib.suppress(OSError):
        (Path(store_path) / CLAIMS_DIR).rmdir()  # only when empty


# ---------------------------------------------------------------------------- owners
@dataclass(frozen=True)
class Owner:
    """Who holds a claim. `job` is SLURM_JOB_ID (unique per array task), `task` is
    "<array job>_<task id>", `restart` is SLURM_RESTART_COUNT (it grows on every requeue)."""

    host: str
    pid: int
    run: str  # the run a task belongs to: its array job id, or the driver's run id
    job: str | None = None
    task: str | None = None
    restart: int = 0

    @classmethod
    def current(cls, run: str | None = None) -> "Owner":
        env = os.environ
        job = env.get("SLURM_JOB_ID")
        array, index = env.get("SLURM_ARRAY_JOB_ID"), env.get("SLURM_ARRAY_TASK_ID")
        return cls(
            host=socket.gethostname(), pid=os.getpid(),
            run=run or array or job or f"pid{os.getpid()}",
            job=job, task=f"{array}_{index}" if array and index else None,
            restart=int(env.get("SLURM_RESTART_COUNT") or 0),
        )

    @property
    def label(self) -> str:
        where = f"{self.host}:{self.pid}"
        if self.job:
            name = self.task or self.job
            return f"job {name} (id {self.job}, restart {self.restart}) on {where}"
        return where


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim file says, and when its heartbeat last touched it."""

    shard: int
    token: str
    owner: Owner
    mtime: float


def _owner_from(data: dict) -> Owner:
    fields = {k: data[k] for k in ("host", "pid", "run", "job", "task", "restart") if k in data}
    return Owner(**{"host": "?", "pid": -1, "run": "?", **fields})


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
        try:
            out = subprocess.run(["squeue", "-h", "-a", "-o", "%A %T"], capture_output=True,
                                 text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired):
            self._running = None
            return None
        if out.returncode != 0:
            self._running = None
            return None
        rows = (line.split() for line in out.stdout.splitlines())
        self._running = {r[0] for r in rows if len(r) == 2 and r[1] in ALIVE_STATES}
        return self._running


def _process_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


# ---------------------------------------------------------------------------- claims
class Claim:
    """A claim this process holds."""

    def __init__(self, path: Path, shard: int, token: str):
        self.path, self.shard, self.token = path, shard, token

    def held(self) -> bool:
        """Whether the claim file still carries our token (a takeover replaces it)."""
        try:
            return json.loads(self.path.read_text()).get("token") == self.token
        except (OSError, ValueError):
            return False

    def touch(self) -> bool:
        """Heartbeat: refresh the mtime; False when the claim is no longer ours."""
        if not self.held():
            return False
        try:
            os.utime(self.path)
        except OSError:
            return False
        return True

    def release(self) -> None:
        if self.held():
            self.path.unlink(missing_ok=True)


class ClaimBoard:
    """The claims of one store and namespace, seen by one owner."""

    def __init__(self, root: str | os.PathLike, owner: Owner, lease_s: float = LEASE_S,
                 slurm: SlurmJobs | None = None):
        self.root = Path(root)
        self.owner = owner
        self.lease_s = lease_s
        self.slurm = slurm if slurm is not None else SlurmJobs()
        self.root.mkdir(parents=True, exist_ok=True)

    def path(self, shard: int) -> Path:
        return self.root / str(shard)

    # --- taking
    def try_claim(self, shard: int) -> Claim | None:
        """Create the claim file atomically; None when the shard is already claimed."""
        token = uuid.uuid4().hex
        body = json.dumps({"shard": shard, "token": token, "claimed_at": time.time(),
                           **asdict(self.owner)})
        target = self.path(shard)
        tmp = self.root / f".tmp.{token}"
        self.root.mkdir(parents=True, exist_ok=True)  # a finished run's cleanup may remove it
        tmp.write_text(body)
        try:
            os.link(tmp, target)
        except FileExistsError:
            return None
        except OSError:  # a filesystem without hard links: O_EXCL create, then write
            try:
                fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "w") as f:
                f.write(body)
        finally:
            tmp.unlink(missing_ok=True)
        return Claim(target, shard, token)

    def read(self, shard: int) -> ClaimInfo | None:
        path = self.path(shard)
        try:
            mtime = path.stat().st_mtime
            data = json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):  # being written (O_EXCL fallback): judge by mtime only
            return ClaimInfo(shard, "", Owner("?", -1, "?"), mtime)
        return ClaimInfo(shard, str(data.get("token", "")), _owner_from(data), mtime)

    def stale_reason(self, info: ClaimInfo) -> str | None:
        """Why a claim may be taken over, or None while its owner may still be working."""
        age = time.time() - info.mtime
        if age > self.lease_s:
            return f"no heartbeat for {age:.0f} s (lease {self.lease_s:.0f} s)"
        owner, me = info.owner, self.owner
        if owner.job and owner.job == me.job and owner.restart < me.restart:
            return f"left by run {owner.restart} of this requeued job"
        if owner.host == me.host and owner.pid > 0 and not owner.job and _process_gone(owner.pid):
            return f"owner process {owner.pid} on this host is gone"
        if owner.job and owner.job != me.job:
            running = self.slurm.running()
            if running is not None and owner.job not in running:
                return f"owner SLURM job {owner.job} is not running"
        return None

    def take_over(self, info: ClaimInfo) -> Claim | None:
        """Replace the stale claim `info`; None when another task got there first."""
        path = self.path(info.shard)
        grave = self.root / f".stale.{info.shard}.{uuid.uuid4().hex}"
        try:
            os.rename(path, grave)
        except FileNotFoundError:
            return None
        try:
            moved = json.loads(grave.read_text()).get("token", "")
        except (OSError, ValueError):
            moved = ""
        if moved != info.token:  # the claim changed since we judged it: put it back
            with contextlib.suppress(OSError):
                os.link(grave, path)
            grave.unlink(missing_ok=True)
            return None
        grave.unlink(missing_ok=True)
        return self.try_claim(info.shard)

    def clear_own_leftovers(self) -> list[int]:
        """Remove claims left by earlier runs of this (requeued) job; return their shards."""
        if not self.owner.job:
            return []
        cleared = []
        for path in self.root.iterdir():
            if not path.name.isdigit():
                continue
            info = self.read(int(path.name))
            mine = info is not None and info.owner.job == self.owner.job
            if mine and info.owner.restart < self.owner.restart:
                if self.take_over(info) is not None:  # atomically ours, then released
                    self.path(info.shard).unlink(missing_ok=True)
                    cleared.append(info.shard)
        return sorted(cleared)

    def acquire(self, candidates: Iterable[int]) -> tuple[Claim, str | None] | None:
        """Claim the first free candidate, else take over the first stale claim among them.

        Returns (claim, why the previous claim was stale, or None), or None when every
        candidate is held by a live owner."""
        candidates = list(candidates)
        for shard in candidates:
            claim = self.try_claim(shard)
            if claim:
                return claim, None
        for shard in candidates:  # all taken: look for stale ones (this may ask squeue)
            info = self.read(shard)
            if info is None:
                claim = self.try_claim(shard)  # released since
                if claim:
                    return claim, None
                continue
            reason = self.stale_reason(info)
            if reason:
                claim = self.take_over(info)
                if claim:
                    return claim, f"{reason}; was held by {info.owner.label}"
        return None

    # --- failures
    def record_failure(self, shard: int, error: str) -> None:
        folder = self.root / "failed"
        folder.mkdir(exist_ok=True)
        body = json.dumps({"shard": shard, "run": self.owner.run, "error": error,
                           "at": time.time(), "owner": self.owner.label})
        (folder / f"{shard}.{_safe(self.owner.run)}.{uuid.uuid4().hex}.json").write_text(body)

    def failures(self, run: str | None = None) -> dict[int, list[str]]:
        """shard -> errors recorded (in `run` only, when given), oldest first."""
        out: dict[int, list[tuple[float, str]]] = {}
        folder = self.root / "failed"
        if not folder.is_dir():
            return {}
        pattern = f"*.{_safe(run)}.*.json" if run is not None else "*.json"
        for path in folder.glob(pattern):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out.setdefault(int(data["shard"]), []).append((data.get("at", 0.0), data["error"]))
        return {s: [e for _, e in sorted(v)] for s, v in out.items()}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


class Heartbeat:
    """Refreshes the mtime of the claim being worked on, from a daemon thread."""

    def __init__(self, interval_s: float = HEARTBEAT_S):
        self.interval_s = interval_s
        self.claim: Claim | None = None
        self.lost: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        while not self._stop.wait(self.interval_s):
            claim = self.claim
            if claim is None or claim.shard in self.lost or claim.touch():
                continue
            if self.claim is claim:  # not just released by the main thread
                self.lost.add(claim.shard)
                log(f"lost the claim of shard {claim.shard} (taken over as stale); "
                    f"finishing it anyway: it writes the same bytes")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


# ---------------------------------------------------------------------------- stopping
class Interrupted(BaseException):
    """Raised in the main thread by a stop signal while a shard computes. A BaseException,
    so that run_shard_safely does not turn it into a failed shard."""


def commit_codes() -> frozenset:
    """Code of the functions that commit a shard (its data chunks, then its done flag): a stop
    signal that arrives while one of them runs waits until it returns, so the shard ends up
    done rather than half written."""
    from cejobs.store import CEStore

    return frozenset({CEStore.write_shard.__code__})


def _committing(frame) -> bool:
    codes = commit_codes()
    while frame is not None:
        if frame.f_code in codes:
            return True
        frame = frame.f_back
    return False


class Stopper:
    """Turns stop signals (SIGUSR2: time limit or preemption; SIGTERM: cancel) into a stop.

    Between shards the loop just ends. While a shard computes, Interrupted is raised to
    abandon it: its claim is released and it is not done. While a shard commits, the commit
    finishes first and the loop ends after it.
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
        self.request(signal.Signals(signum).name)
        if self._computing and not _committing(frame):
            self._computing = False
            raise Interrupted(self.reason)

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
    from cejobs.threads import set_threads

    set_threads(threads)  # 0: the CPUs of this task (SLURM_CPUS_PER_TASK, affinity)
    if make_worker is None:
        from cejobs.workers import make_worker
    return make_worker(task)


@dataclass
class LoopReport:
    done: list[int] = field(default_factory=list)  # shards this loop finished
    failed: dict[int, str] = field(default_factory=dict)  # shard -> error, in this loop
    interrupted: str | None = None  # the stop signal's name, when stopped early
    abandoned: int | None = None  # the shard that was running when the stop came


def claim_loop(
    task: ShardTask,
    owner: Owner | None = None,  # who claims; default: from the SLURM environment
    lease_s: float = LEASE_S,  # heartbeat age after which a claim is stale
    heartbeat_s: float = HEARTBEAT_S,  # heartbeat period
    max_attempts: int = 4,  # tries of a failing shard within one run, over all tasks
    stopper: Stopper | None = None,  # stop signals; None: run until no shard is left
    threads: int = 0,  # torch threads (0: the task's CPUs, cejobs.threads.available_cpus)
    start: int = 0,  # where to start in the pending list (spreads the first claims)
    make_worker: Callable | None = None,  # task -> worker; default cejobs.workers.make_worker
) -> LoopReport:
    """Claim and run shards of `task` until none is left to claim; see the module doc."""
    from cejobs.store import CEStore
    from cejobs.tasks import ShardResult, run_shard_safely

    owner = owner or Owner.current()
    stopper = stopper or Stopper()
    work = WORK[task.kind]
    store = CEStore.open(task.store)
    board = ClaimBoard(claims_root(task.store, work.namespace), owner, lease_s)
    report = LoopReport()
    worker = None
    skip: set[int] = set()  # failed here: left to other tasks or a later run
    cleared = board.clear_own_leftovers()
    if cleared:
        log(f"released claims left by an earlier run of this job: shards {cleared}")
    heartbeat = Heartbeat(heartbeat_s)
    try:
        while not stopper.reason:
            failures = board.failures(owner.run)
            exhausted = {s for s, errors in failures.items() if len(errors) >= max_attempts}
            pending = [s for s in pending_shards(store, task) if s not in skip | exhausted]
            if not pending:
                break
            i = start % len(pending)
            got = board.acquire(pending[i:] + pending[:i])
            if got is None:
                log(f"{len(pending)} shard(s) not done, all claimed by running tasks")
                break
            claim, stale = got
            shard = claim.shard
            if stale:
                log(f"took over shard {shard}: {stale}")
            heartbeat.claim = claim
            try:
                if work.flags(store, task)[1][shard]:
                    continue  # finished by another task between our look and our claim
                log(f"claimed shard {shard} ({owner.label})")
                try:
                    with stopper.computing():
                        if worker is None:  # only once there is a shard: loads the models
                            worker = _start_worker(task, threads, make_worker)
                        result = run_shard_safely(worker, shard)
                except Interrupted:
                    report.interrupted, report.abandoned = stopper.reason, shard
                    log(f"shard {shard} abandoned ({stopper.reason}): not done, claim released")
                    break
                except Exception as e:  # worker construction failed: no shard can run here
                    result = ShardResult(shard, error=f"{type(e).__name__}: {e}\n"
                                                      f"{traceback.format_exc(limit=4)}")
                    board.record_failure(shard, result.error)
                    report.failed[shard] = result.error
                    log(f"shard {shard} failed: cannot start a worker: {type(e).__name__}: {e}")
                    break
                if result.ok:
                    report.done.append(shard)
                    log(f"shard {shard} done in {result.seconds:.1f} s ({result.ces} CEs)")
                else:
                    board.record_failure(shard, result.error)
                    report.failed[shard] = result.error
                    skip.add(shard)
                    log(f"shard {shard} failed: {result.error.strip().splitlines()[0]}")
            finally:
                heartbeat.claim = None
                claim.release()
        if stopper.reason and report.interrupted is None:
            report.interrupted = stopper.reason
            log(f"stopping ({stopper.reason}) between shards")
    finally:
        heartbeat.close()
    return report
