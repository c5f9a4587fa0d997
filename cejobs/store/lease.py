"""The driver lease: one driver per job kind per store (generate, evaluate).

A driver holds `<store>/leases/<kind>.json` (who: host, pid, since, command) while it runs, and
a heartbeat thread refreshes its mtime every HEARTBEAT_S. A second driver on the same store
refuses with one line naming the holder. The lease is stale, and is taken over, when its
heartbeat is older than LEASE_S, or its holder was on this host and its process is gone (a
driver killed with SIGKILL); a takeover first renames the stale file away, so one taker wins.
SLURM array tasks take no lease: they share a store through their claims
(cejobs/backends/slurm/claims.py), under the lease of the driver that submitted them, if any.
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid

from cejobs.errors import StoreError
from cejobs.store.store import CEStore, check_writable, write_error

LEASE_S = 120.0  # a lease without a heartbeat for this long is stale
HEARTBEAT_S = 15.0


def _pid_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except (PermissionError, OverflowError, ValueError):
        return False
    return False


class DriverLease:
    """`with DriverLease(store, "generate"):` the body runs as the store's only such driver."""

    def __init__(self, store: CEStore, kind: str):
        self.store, self.kind = store, kind
        self.key = f"leases/{kind}.json"
        self.token = uuid.uuid4().hex
        self.me = dict(host=socket.gethostname(), pid=os.getpid(), since=time.time(),
                       command=" ".join(sys.argv)[:300], token=self.token)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # ------------------------------------------------------------------ holder
    def _holder(self) -> dict | None:
        try:
            doc = json.loads(self.store.read_key(self.key))
            return doc if isinstance(doc, dict) else None
        except (OSError, ValueError):
            return None

    def _stale(self, holder: dict | None, age: float) -> bool:
        if holder is None or age > LEASE_S:  # unreadable (a write that died) or no heartbeat
            return True
        pid = holder.get("pid")
        return (holder.get("host") == self.me["host"] and isinstance(pid, int)
                and _pid_gone(pid))

    def acquire(self) -> None:
        check_writable(self.store.path)  # an existing store that can't be written: one line
        data = json.dumps(self.me).encode()
        try:
            self._take(data)
        except OSError as e:
            raise write_error(self.store.path, e) from None

    def _take(self, data: bytes) -> None:
        for _ in range(3):
            if self.store.create_key(self.key, data):
                self._thread = threading.Thread(target=self._beat, daemon=True,
                                                name=f"cejobs-lease-{self.kind}")
                self._thread.start()
                return
            holder, age = self._holder(), self.store.key_age(self.key)
            if age is None:
                continue  # released meanwhile
            if not self._stale(holder, age):
                h = holder or {}
                since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(h.get("since", 0)))
                raise StoreError(
                    f"another {self.kind} driver is running on {self.store.path} (host "
                    f"{h.get('host')}, pid {h.get('pid')}, since {since}, heartbeat {age:.0f} s "
                    f"ago); wait for it to end, or stop it; its lease lapses {LEASE_S:.0f} s "
                    f"after its last heartbeat")
            self.store.move_key(self.key, f"{self.key}.{uuid.uuid4().hex}.stale")
            for key in self.store.list_folder("leases"):
                if key.endswith(".stale"):
                    self.store.remove_key(f"leases/{key}")
        raise StoreError(f"could not take the {self.kind} lease of {self.store.path}: other "
                         f"drivers keep taking it; run one driver at a time")

    def _beat(self) -> None:
        while not self._stop.wait(HEARTBEAT_S):
            try:
                self.store.touch_key(self.key)
            except OSError:
                pass  # storage trouble shows in the shard writes

    def release(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            holder = self._holder()
            if holder is not None and holder.get("token") == self.token:
                try:
                    self.store.remove_key(self.key)
                    self.store.remove_empty_folder("leases")
                except OSError:
                    pass  # it lapses by itself
            self._thread = None

    def __enter__(self) -> "DriverLease":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
