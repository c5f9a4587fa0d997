"""The heartbeat lease (cejobs/store/lease.py): who may take a lease over, and when.

A holder's pid is only checked in the taker's own pid space (host, boot, pid namespace):
two drivers on hosts that share a hostname but not a pid namespace (containers, pods) are
run with `unshare --uts --pid --fork --mount-proc` (root only)."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from cejobs.errors import StoreError
from cejobs.hosts import process_identity
from cejobs.store.create import create_or_open
from cejobs.store.layout import Layout, generation_arrays
from cejobs.store.lease import LEASE_S, DriverLease, lapsed, read_lease, take_lease, take_over
from cejobs.store.location import location

REPO = Path(__file__).resolve().parents[3]
KEY = "leases/generate.json"


def _store(tmp_path: Path):
    return create_or_open(tmp_path / "s.zarr", {}, Layout(2, 1, 2, (1, 2, 2), 1),
                          generation_arrays(), {})


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_dead_holder_in_this_pid_space_is_taken_over_at_once(tmp_path):
    store = _store(tmp_path)
    dead = _dead_pid()
    store.storage.write(KEY, json.dumps({**process_identity(), "pid": dead, "token": "x"}).encode())
    info = read_lease(store.storage, KEY)
    assert lapsed(info, LEASE_S) == f"owner process {dead} on this host is gone"
    with DriverLease(store, "generate") as lease:
        assert read_lease(store.storage, KEY).holder["pid"] == os.getpid()
        assert lease.lease.held()
    assert store.storage.kind("leases") == "missing"  # released, folder removed


@pytest.mark.parametrize("field, value", [("pid_ns", "pid:[1]"), ("boot_id", "another-boot"),
                                          ("host", "elsewhere@10.9.9.9")])
def test_a_holder_in_another_pid_space_is_judged_by_its_heartbeat(tmp_path, field, value):
    store = _store(tmp_path)
    holder = {**process_identity(), "pid": _dead_pid(), field: value}
    assert take_lease(store.storage, KEY, holder) is not None
    info = read_lease(store.storage, KEY)
    assert lapsed(info, LEASE_S) is None  # its pid says nothing here
    with pytest.raises(StoreError, match="another generate driver is running"):
        DriverLease(store, "generate").acquire()
    old = time.time() - LEASE_S - 60
    os.utime(store.storage.local_path(KEY), (old, old))
    assert lapsed(read_lease(store.storage, KEY), LEASE_S).startswith("no heartbeat for 1")
    with DriverLease(store, "generate"):
        assert read_lease(store.storage, KEY).holder["pid"] == os.getpid()


def test_take_over_puts_back_a_lease_renewed_since_it_was_judged(tmp_path):
    storage = location(tmp_path)
    take_lease(storage, "k", {"pid": 1})
    judged = read_lease(storage, "k")
    storage.remove("k")
    renewed = take_lease(storage, "k", {"pid": 2})  # another taker, after we judged
    assert take_over(storage, judged, {"pid": 3}) is None
    assert renewed.held() and read_lease(storage, "k").holder["pid"] == 2
    assert storage.names() == ["k"]  # nothing left beside it
    mine = take_over(storage, read_lease(storage, "k"), {"pid": 3})
    assert mine.held() and not renewed.held() and read_lease(storage, "k").holder["pid"] == 3


HOLD = """
    import sys
    from cejobs.store.lease import DriverLease
    from cejobs.store.store import CEStore
    with DriverLease(CEStore.open(sys.argv[1]), "generate"):
        print("held", flush=True)
        sys.stdin.readline()
"""

TRY = """
    import json, os, socket, sys
    from cejobs.errors import StoreError
    from cejobs.hosts import host_label, process_gone
    from cejobs.store.lease import DriverLease, read_lease
    from cejobs.store.store import CEStore
    store = CEStore.open(sys.argv[1])
    held = read_lease(store.storage, "leases/generate.json")
    out = dict(hostname=socket.gethostname(), host=host_label(), pid=os.getpid(),
               holder_pid_absent_here=held and process_gone(held.holder["pid"]))
    try:
        with DriverLease(store, "generate"):
            out["took"] = True
    except StoreError as e:
        out.update(took=False, error=str(e))
    print(json.dumps(out))
"""


def _python(script: str, *args: str, namespace: bool = False, **kw) -> subprocess.Popen:
    command = [sys.executable, "-c", textwrap.dedent(script), *args]
    if namespace:  # a host with the same hostname and address, its own pid namespace
        command = ["unshare", "--uts", "--pid", "--fork", "--mount-proc", *command]
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, text=True, **kw)


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("unshare") is None,
                    reason="needs root and unshare(1) for a pid namespace")
def test_a_live_driver_in_another_pid_namespace_with_the_same_hostname_keeps_its_lease(
        tmp_path):
    store = _store(tmp_path)
    first = _python(HOLD, str(store.storage), stdin=subprocess.PIPE)
    try:
        assert first.stdout.readline().strip() == "held"
        before = read_lease(store.storage, KEY)
        second = _python(TRY, str(store.storage), namespace=True)
        out = json.loads(second.communicate(timeout=120)[0])
        assert out["hostname"] == socket.gethostname() and out["host"] == before.holder["host"]
        assert out["pid"] == 1  # the namespace's first process
        assert out["holder_pid_absent_here"] is True  # a pid check alone would take over
        assert out["took"] is False
        assert f"another generate driver is running on {store.storage} (host" in out["error"]
        assert f"pid {first.pid}" in out["error"]
        assert read_lease(store.storage, KEY).token == before.token  # still the first's
        first.stdin.write("\n")
        first.stdin.flush()
        assert first.wait(timeout=60) == 0
    finally:
        first.kill()
        first.wait()
    second = _python(TRY, str(store.storage), namespace=True)
    assert json.loads(second.communicate(timeout=120)[0])["took"] is True  # once released
