"""Shard claims on shared storage, and the claim loop that SLURM array tasks run.

Work is split by the store, not by fixed slices: every task repeatedly claims a shard that
is not done, runs it (the shard writes its data, then its done flag), and releases the claim,
until nothing is left. A resubmitted array therefore finishes exactly what is left.

- A claim is a heartbeat lease (cejobs/store/lease.py) on the key
  `claims/<namespace>/<shard>` of the store's storage: made by hard-linking a complete
  temporary file to that name, atomic, and it fails when the name exists (O_EXCL semantics,
  also on NFS). Its JSON names the owner: SLURM job and array task, restart count, host, pid,
  boot and pid namespace, run, and a token unique to the claim.
- While the shard runs, a heartbeat thread refreshes the claim's mtime.
- A claim is stale, and may be taken over, when its heartbeat is older than the lease or
  than the shard timeout (the watchdog: its owner is hung, e.g. stopped), when
  its owner's SLURM job is no longer running (or is a later run of a requeued job), or when
  its owner process in this pid space (host, boot, pid namespace) is gone. A takeover moves
  the stale claim away first, so only one taker wins.
- Claims need hard links and renames of a shared filesystem: stores in object storage are
  refused for the SLURM backend (cejobs.jobs.config.check_slurm_store).
- Claims only avoid duplicate work. Every CE depends only on the seed and its position, and
  chunk writes are atomic, so a shard that two tasks run by accident writes the same bytes.
- A shard that fails is recorded under `claims/<namespace>/failed/` and retried by other
  tasks of the same run, up to `max_attempts` times in all; a resubmission (a new run)
  retries it again.

The claim loop that runs in every array task is in `loop.py`.
"""

from __future__ import annotations

import fnmatch
import json
import os
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from typing import Callable, Iterable

from cejobs.backends.slurm.squeue import SlurmJobs
from cejobs.hosts import boot_id, host_label, pid_namespace
from cejobs.slurm_env import current_job
from cejobs.store import lease
from cejobs.store.lease import Lease, lapsed, read_lease, take_lease
from cejobs.store.location import location
from cejobs.store.storage import Storage

CLAIMS_DIR = "claims"
LEASE_S = 600.0  # a claim without a heartbeat for this long is stale
HEARTBEAT_S = 30.0  # how often a held claim's mtime is refreshed


def log(message: str) -> None:
    """One timestamped line on stderr (the task's SLURM log)."""
    print(f"[{time.strftime('%H:%M:%S')}] cejobs: {message}", file=sys.stderr, flush=True)


def claims_root(store: Storage | str | os.PathLike, namespace: str) -> Storage:
    """The claims of one namespace of a store (a Storage, or its path)."""
    return location(store).sub(f"{CLAIMS_DIR}/{namespace}")


def remove_claims(store: Storage | str | os.PathLike, namespace: str) -> None:
    """Delete a finished namespace's claims and failure records (and `claims/` once empty)."""
    storage = location(store)
    storage.remove(f"{CLAIMS_DIR}/{namespace}")
    storage.remove_empty_folder(CLAIMS_DIR)


# ---------------------------------------------------------------------------- owners
@dataclass(frozen=True)
class Owner:
    """Who holds a claim. `job` is SLURM_JOB_ID (unique per array task), `task` is
    "<array job>_<task id>", `restart` is SLURM_RESTART_COUNT (it grows on every requeue);
    `boot_id` and `pid_ns` say in which pid space `pid` names a process (cejobs.hosts)."""

    host: str
    pid: int
    run: str  # the run a task belongs to: its array job id, or the driver's run id
    job: str | None = None
    task: str | None = None
    restart: int = 0
    boot_id: str = ""
    pid_ns: str = ""

    @classmethod
    def current(cls, run: str | None = None) -> "Owner":
        job = current_job()
        return cls(host=host_label(), pid=os.getpid(), run=run or job.array or f"pid{os.getpid()}",
                   job=job.job_id, task=job.task, restart=job.restart_count,
                   boot_id=boot_id(), pid_ns=pid_namespace())

    @property
    def label(self) -> str:
        where = f"{self.host}:{self.pid}"
        if self.job:
            name = self.task or self.job
            return f"job {name} (id {self.job}, restart {self.restart}) on {where}"
        return where


FIELDS = ("host", "pid", "run", "job", "task", "restart", "boot_id", "pid_ns")


@dataclass(frozen=True)
class ClaimInfo:
    """What a claim says, and how long ago its heartbeat last touched it."""

    shard: int
    token: str
    owner: Owner
    age: float
    holder: dict  # the claim's JSON ({} when it does not read)


def _owner_from(data: dict) -> Owner:
    fields = {k: data[k] for k in FIELDS if k in data}
    return Owner(**{"host": "?", "pid": -1, "run": "?", **fields})


# ---------------------------------------------------------------------------- claims
class Claim(Lease):
    """A claim this process holds: a lease named by its shard."""

    @property
    def shard(self) -> int:
        return self.name


class ClaimBoard:
    """The claims of one store and namespace (`claims_root`), seen by one owner."""

    def __init__(self, root: Storage | str | os.PathLike, owner: Owner,
                 lease_s: float = LEASE_S, slurm: SlurmJobs | None = None):
        self.root = location(root)
        self.owner = owner
        self.lease_s = lease_s
        self.hung_s: float | None = None  # the shard timeout, when there is one (watchdog)
        self.slurm = slurm if slurm is not None else SlurmJobs()

    def _claim(self, got: Lease | None) -> Claim | None:
        return None if got is None else Claim(got.storage, got.key, got.token, got.name)

    def _body(self, shard: int) -> dict:
        return {"shard": shard, "claimed_at": time.time(), **asdict(self.owner)}

    # --- taking
    def try_claim(self, shard: int) -> Claim | None:
        """Create the claim atomically; None when the shard is already claimed."""
        return self._claim(take_lease(self.root, str(shard), self._body(shard), shard))

    def read(self, shard: int) -> ClaimInfo | None:
        info = read_lease(self.root, str(shard))
        if info is None:
            return None
        return ClaimInfo(shard, info.token, _owner_from(info.holder), info.age, info.holder)

    def stale_reason(self, info: ClaimInfo) -> str | None:
        """Why a claim may be taken over, or None while its owner may still be working. An
        unreadable claim (being written without hard links) is judged by its age only."""
        age = info.age
        if age > self.lease_s:
            return f"no heartbeat for {age:.0f} s (lease {self.lease_s:.0f} s)"
        if self.hung_s is not None and age > self.hung_s:
            return f"hung: no heartbeat for {age:.0f} s, over the shard timeout {self.hung_s:.0f} s"
        owner, me = info.owner, self.owner
        if owner.job and owner.job == me.job and owner.restart < me.restart:
            return f"left by run {owner.restart} of this requeued job"
        if not owner.job:  # a SLURM job's process is judged by SLURM, below
            gone = lapsed(self._lease_info(info), self.lease_s)
            if gone:
                return gone
        if owner.job and owner.job != me.job:
            running = self.slurm.running()
            if running is not None and owner.job not in running:
                return f"owner SLURM job {owner.job} is not running"
        return None

    def _lease_info(self, info: ClaimInfo) -> lease.LeaseInfo:
        return lease.LeaseInfo(str(info.shard), info.token, info.holder, info.age)

    def take_over(self, info: ClaimInfo) -> Claim | None:
        """Replace the stale claim `info`; None when another task got there first."""
        return self._claim(lease.take_over(self.root, self._lease_info(info),
                                           self._body(info.shard), info.shard))

    def clear_own_leftovers(self) -> list[int]:
        """Remove claims left by earlier runs of this (requeued) job; return their shards."""
        if not self.owner.job:
            return []
        cleared = []
        for name in self.root.names():
            if not name.isdigit():
                continue
            info = self.read(int(name))
            mine = info is not None and info.owner.job == self.owner.job
            if mine and info.owner.restart < self.owner.restart:
                if self.take_over(info) is not None:  # atomically ours, then released
                    self.root.remove(name)
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
        body = json.dumps({"shard": shard, "run": self.owner.run, "error": error,
                           "raised": raised, "at": time.time(), "owner": self.owner.label})
        self.root.write(f"failed/{shard}.{_safe(self.owner.run)}.{uuid.uuid4().hex}.json",
                        body.encode())

    def _records(self, run: str | None) -> dict[int, list[dict]]:
        out: dict[int, list[dict]] = {}
        pattern = f"*.{_safe(run)}.*.json" if run is not None else "*.json"
        for name in fnmatch.filter(self.root.names("failed"), pattern):
            try:
                data = json.loads(self.root.read(f"failed/{name}"))
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


class Heartbeat(lease.Heartbeat):
    """Refreshes the claim being worked on (`lease`), and logs when it was taken over."""

    def __init__(self, interval_s: float = HEARTBEAT_S,
                 on_lost: Callable[[int], bool] | None = None):
        """`on_lost(shard)`: called from this thread when the held claim was taken over;
        True when the shard in hand is abandoned (loop.py), else it is finished anyway."""
        super().__init__(interval_s, on_lost, name="claim-heartbeat")

    def report_lost(self, claim: Lease, abandoned: bool) -> None:
        if abandoned:
            log(f"lost the claim of shard {claim.name} (taken over as stale); abandoning it")
        else:
            log(f"lost the claim of shard {claim.name} (taken over as stale); finishing it "
                f"anyway: it writes the same bytes")
