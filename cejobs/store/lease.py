"""Heartbeat leases on a store's storage, and the driver lease built on them.

A lease is a key (a file, an object) made with `Storage.create`, so of two takers exactly one
gets it. Its JSON names the holder (`cejobs.hosts.process_identity`: host, pid, boot, pid
namespace, plus what the user of the lease adds) and a token unique to this taking. While it
is held, a `Heartbeat` thread makes it young again (`Storage.touch`) every heartbeat period.
A lease is stale, and may be taken over, when its heartbeat is older than the lease time, or
when its holder is known to be gone: it ran in this pid space (same host, boot and pid
namespace) and its pid no longer exists (a process killed with SIGKILL). A holder elsewhere,
e.g. in another container with the same hostname, is judged by its heartbeat alone. A
takeover first moves the stale key away and checks its token, so only one taker wins and a
lease that was renewed meanwhile is put back.

Two users: the driver lease (`DriverLease`: one driver per job kind per store, 120 s / 15 s)
and the SLURM shard claims (cejobs/backends/slurm/claims.py, 600 s / 30 s, with SLURM's own
reasons for staleness). SLURM array tasks take no driver lease: they share a store through
their claims, under the lease of the driver that submitted them, if any.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any, Callable, Hashable

from cejobs.errors import StoreError
from cejobs.hosts import holder_gone, process_identity
from cejobs.store.format import write_error
from cejobs.store.storage import Storage
from cejobs.store.store import CEStore

LEASE_S = 120.0  # a driver lease without a heartbeat for this long is stale
HEARTBEAT_S = 15.0


@dataclass(frozen=True)
class LeaseInfo:
    """What a lease key says ({} when it does not read), and its heartbeat's age."""

    key: str
    token: str
    holder: dict[str, Any]
    age: float


class Lease:
    """A lease this process took; `name` says what it is for (a shard, a job kind)."""

    def __init__(self, storage: Storage, key: str, token: str, name: Hashable = None):
        self.storage, self.key, self.token, self.name = storage, key, token, name

    def held(self) -> bool:
        """Whether the key still carries our token (a takeover replaces it)."""
        info = read_lease(self.storage, self.key)
        return info is not None and info.token == self.token

    def touch(self) -> bool:
        """Heartbeat: make the lease young again; False when it is no longer ours."""
        if not self.held():
            return False
        try:
            self.storage.touch(self.key)
        except OSError:
            return False
        return True

    def release(self) -> None:
        if self.held():
            self.storage.remove(self.key)


def take_lease(storage: Storage, key: str, holder: dict[str, Any],
               name: Hashable = None) -> Lease | None:
    """Take the lease `key` for `holder` (its JSON, a token added); None when it is held."""
    token = uuid.uuid4().hex
    if not storage.create(key, json.dumps({**holder, "token": token}).encode()):
        return None
    return Lease(storage, key, token, name)


def read_lease(storage: Storage, key: str) -> LeaseInfo | None:
    """The lease `key`, None when there is none."""
    age = storage.age(key)
    if age is None:
        return None
    try:
        doc = json.loads(storage.read(key))
    except FileNotFoundError:
        return None
    except (OSError, ValueError):  # being written (no hard links), or damaged
        doc = None
    holder = doc if isinstance(doc, dict) else {}
    return LeaseInfo(key, str(holder.get("token", "")), holder, age)


def lapsed(info: LeaseInfo, lease_s: float) -> str | None:
    """Why the lease is stale by its heartbeat or its holder's process, or None."""
    if info.age > lease_s:
        return f"no heartbeat for {info.age:.0f} s (lease {lease_s:.0f} s)"
    if holder_gone(info.holder):
        return f"owner process {info.holder['pid']} on this host is gone"
    return None


def take_over(storage: Storage, info: LeaseInfo, holder: dict[str, Any],
              name: Hashable = None) -> Lease | None:
    """Replace the stale lease `info` by ours; None when another taker got there first."""
    grave = f"{info.key}.{uuid.uuid4().hex}.stale"
    if not storage.move(info.key, grave):
        return None
    try:
        moved = read_lease(storage, grave)
        if moved is None or moved.token != info.token:  # renewed since we judged it: put back
            if moved is not None:
                storage.create(info.key, storage.read(grave))
            return None
    finally:
        storage.remove(grave)
    return take_lease(storage, info.key, holder, name)


class Heartbeat:
    """Touches the lease in `lease` every `interval_s`, from a daemon thread. The lease may be
    swapped at any time (the claim loop holds one claim after another), and `interval_s`
    shortened (the SLURM watchdog)."""

    def __init__(self, interval_s: float, on_lost: Callable[[Any], bool] | None = None,
                 name: str = "cejobs-heartbeat"):
        """`on_lost(lease name)`: called from this thread when the lease was taken over;
        True when the work it covered is abandoned."""
        self.interval_s, self.on_lost = interval_s, on_lost
        self.lease: Lease | None = None
        self.lost: set = set()  # names of leases found taken over
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name=name, daemon=True)
        self._thread.start()

    def _beat(self) -> None:
        last = time.monotonic()
        while not self._stop.wait(min(1.0, self.interval_s)):
            if time.monotonic() - last < self.interval_s:
                continue
            last = time.monotonic()
            lease = self.lease
            if lease is None or lease.name in self.lost or lease.touch():
                continue
            if self.lease is lease:  # not just released by the main thread
                self.lost.add(lease.name)
                abandoned = self.on_lost is not None and self.on_lost(lease.name)
                self.report_lost(lease, abandoned)

    def report_lost(self, lease: Lease, abandoned: bool) -> None:
        """Say that `lease` was taken over (subclasses log it)."""

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class DriverLease:
    """`with DriverLease(store, "generate"):` the body runs as the store's only such driver.

    The lease is `leases/<kind>.json` of the store (who: host, pid, since, command)."""

    def __init__(self, store: CEStore, kind: str):
        self.storage, self.kind = store.storage, kind
        self.key = f"leases/{kind}.json"
        self.me = dict(process_identity(), since=time.time(), command=" ".join(sys.argv)[:300])
        self.lease: Lease | None = None
        self._heartbeat: Heartbeat | None = None

    def acquire(self) -> None:
        self.storage.check_writable()  # an existing store that can't be written: one line
        try:
            self.lease = self._take()
        except OSError as e:
            raise write_error(self.storage, e) from None
        self._heartbeat = Heartbeat(HEARTBEAT_S, name=f"cejobs-lease-{self.kind}")
        self._heartbeat.lease = self.lease

    def _take(self) -> Lease:
        for _ in range(3):
            lease = take_lease(self.storage, self.key, self.me, self.kind)
            if lease is not None:
                return lease
            info = read_lease(self.storage, self.key)
            if info is None:
                continue  # released meanwhile
            if info.holder and not lapsed(info, LEASE_S):  # an unreadable lease is a dead write
                h = info.holder
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("since", 0)))
                raise StoreError(
                    f"another {self.kind} driver is running on {self.storage} (host "
                    f"{h.get('host')}, pid {h.get('pid')}, since {since}, heartbeat "
                    f"{info.age:.0f} s ago); wait for it to end, or stop it; its lease lapses "
                    f"{LEASE_S:.0f} s after its last heartbeat")
            lease = take_over(self.storage, info, self.me, self.kind)
            if lease is not None:
                return lease
        raise StoreError(f"could not take the {self.kind} lease of {self.storage}: other "
                         f"drivers keep taking it; run one driver at a time")

    def release(self) -> None:
        if self._heartbeat is not None:
            self._heartbeat.close()
            self._heartbeat = None
        if self.lease is not None:
            try:
                self.lease.release()
                self.storage.remove_empty_folder("leases")
            except OSError:
                pass  # it lapses by itself
            self.lease = None

    def __enter__(self) -> "DriverLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
