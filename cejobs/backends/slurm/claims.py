"""Shard claims on shared storage, and the claim loop that SLURM array tasks run.

Work is split by the store, not by fixed slices: every task repeatedly claims a shard that
is not done, runs it (the shard writes its data, then its done flag), and releases the claim,
until nothing is left. A resubmitted array therefore finishes exactly what is left.

- A claim is the file `<store>/claims/<namespace>/<shard>`, made by hard-linking a complete
  temporary file to that name: atomic, and it fails when the name exists (O_EXCL semantics,
  also on NFS). Its JSON names the owner: SLURM job and array task, restart count, host, pid,
  run, and a token unique to the claim.
- While the shard runs, a heartbeat thread refreshes the claim's mtime.
- A claim is stale, and may be taken over, when its heartbeat is older than the lease or
  than the shard timeout (the watchdog: its owner is hung, e.g. stopped), when
  its owner's SLURM job is no longer running (or is a later run of a requeued job), or when
  its owner process on this host is gone. A takeover renames the stale file away first, so
  only one taker wins.
- Claims only avoid duplicate work. Every CE depends only on the seed and its position, and
  chunk writes are atomic, so a shard that two tasks run by accident writes the same bytes.
- A shard that fails is recorded under `claims/<namespace>/failed/` and retried by other
  tasks of the same run, up to `max_attempts` times in all; a resubmission (a new run)
  retries it again.

The claim loop that runs in every array task is in `loop.py`.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Iterable

from cejobs.backends.slurm.squeue import SlurmJobs
from cejobs.hosts import host_label
from cejobs.slurm_env import current_job

CLAIMS_DIR = "claims"
LEASE_S = 600.0  # a claim without a heartbeat for this long is stale
HEARTBEAT_S = 30.0  # how often a held claim's mtime is refreshed


def log(message: str) -> None:
    """One timestamped line on stderr (the task's SLURM log)."""
    print(f"[{time.strftime('%H:%M:%S')}] cejobs: {message}", file=sys.stderr, flush=True)


def claims_root(store_path: str | os.PathLike, namespace: str) -> Path:
    return Path(store_path) / CLAIMS_DIR / namespace


def remove_claims(store_path: str | os.PathLike, namespace: str) -> None:
    """Delete a finished namespace's claims and failure records (and `claims/` once empty)."""
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
        job = current_job()
        return cls(host=host_label(), pid=os.getpid(), run=run or job.array or f"pid{os.getpid()}",
                   job=job.job_id, task=job.task, restart=job.restart_count)

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
        self.hung_s: float | None = None  # the shard timeout, when there is one (watchdog)
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
        if self.hung_s is not None and age > self.hung_s:
            return f"hung: no heartbeat for {age:.0f} s, over the shard timeout {self.hung_s:.0f} s"
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
    def record_failure(self, shard: int, error: str, raised: bool = False) -> None:
        """Record a failed attempt at `shard`: it `raised` (final for this run, as on Ray: a
        retry computes the same numbers), or its worker was lost or could not start."""
        folder = self.root / "failed"
        folder.mkdir(exist_ok=True)
        body = json.dumps({"shard": shard, "run": self.owner.run, "error": error,
                           "raised": raised, "at": time.time(), "owner": self.owner.label})
        (folder / f"{shard}.{_safe(self.owner.run)}.{uuid.uuid4().hex}.json").write_text(body)

    def _records(self, run: str | None) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        folder = self.root / "failed"
        if not folder.is_dir():
            return {}
        pattern = f"*.{_safe(run)}.*.json" if run is not None else "*.json"
        for path in folder.glob(pattern):
            try:
                data = json.loads(path.read_text())
            except (OSError, ValueError):
                continue
            out.setdefault(int(data["shard"]), []).append(data)
        return {s: sorted(v, key=lambda d: d.get("at", 0.0)) for s, v in out.items()}

    def failures(self, run: str | None = None) -> dict[int, list[str]]:
        """shard -> errors recorded (in `run` only, when given), oldest first."""
        return {s: [d["error"] for d in v] for s, v in self._records(run).items()}

    def given_up(self, run: str, max_retries: int) -> dict[int, str]:
        """Shards that `run` stops trying, with their last error: one that raised, or one
        whose attempts were lost more than `max_retries` times (--max-retries)."""
        return {s: v[-1]["error"] for s, v in self._records(run).items()
                if any(d.get("raised") for d in v) or len(v) > max_retries}


def _safe(text: str) -> str:
    return "".join(c if c.isalnum() or c in "-_" else "-" for c in text)


class Heartbeat:
    """Refreshes the mtime of the claim being worked on, from a daemon thread."""

    def __init__(self, interval_s: float = HEARTBEAT_S,
                 on_lost: Callable[[int], bool] | None = None):
        """`on_lost(shard)`: called from this thread when the held claim was taken over;
        True when the shard in hand is abandoned (loop.py), else it is finished anyway."""
        self.interval_s, self.on_lost = interval_s, on_lost
        self.claim: Claim | None = None
        self.lost: set[int] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="claim-heartbeat", daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        last = time.monotonic()
        # wakes often: the loop may shorten interval_s (the watchdog) at any time
        while not self._stop.wait(min(1.0, self.interval_s)):
            if time.monotonic() - last < self.interval_s:
                continue
            last = time.monotonic()
            claim = self.claim
            if claim is None or claim.shard in self.lost or claim.touch():
                continue
            if self.claim is claim:  # not just released by the main thread
                self.lost.add(claim.shard)
                if self.on_lost is not None and self.on_lost(claim.shard):
                    log(f"lost the claim of shard {claim.shard} (taken over as stale); "
                        f"abandoning it")
                else:
                    log(f"lost the claim of shard {claim.shard} (taken over as stale); "
                        f"finishing it anyway: it writes the same bytes")

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
