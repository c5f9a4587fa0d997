"""SLURM shard claims (cejobs/backends/slurm/claims.py) and how the claim loop
(cejobs/backends/slurm/loop.py) keeps or gives up a claimed shard; no cluster needed.

A claim is a file per shard under the store's claims folder, kept fresh by a heartbeat;
docs/reliability.md says when a claim is stale and who may take it over.
"""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest

from cejobs.backends.slurm.claims import ClaimBoard, Heartbeat, Owner
from cejobs.backends.slurm.loop import Interrupted, Stopper
from cejobs.backends.slurm.squeue import SlurmJobs
from cejobs.jobs.kinds import KINDS, pending_shards
from cejobs.jobs.tasks import ShardTask
from cejobs.store.layout import Layout, generation_arrays
from cejobs.store.create import create_or_open
from cejobs.store.store import CEStore
from tests.conftest import REPO


def _claimer(root: Path, script: str) -> subprocess.Popen:
    """A second process with a ClaimBoard on `root`; it reads its commands on stdin."""
    code = textwrap.dedent(f"""
        import json, os, sys
        from cejobs.backends.slurm.claims import ClaimBoard, Owner
        board = ClaimBoard({str(root)!r}, Owner.current(run="other"), lease_s=3600)
    """) + textwrap.dedent(script)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    for key in [k for k in env if k.startswith("SLURM_")]:
        env.pop(key)  # an owner outside SLURM, whatever runs the tests
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True, env=env)


def test_two_processes_never_claim_the_same_shard(tmp_path: Path) -> None:
    """Both processes go for the same shard in every round (lockstep through their stdin), so
    they contend 300 times whatever the scheduler does; exactly one wins each round."""
    script = """
        for line in sys.stdin:
            print(json.dumps(board.try_claim(int(line)) is not None), flush=True)
    """
    procs = [_claimer(tmp_path, script) for _ in range(2)]
    wins = []
    for shard in range(300):
        for p in (procs if shard % 2 else procs[::-1]):  # alternate who is told first
            p.stdin.write(f"{shard}\n")
            p.stdin.flush()
        wins.append([json.loads(p.stdout.readline()) for p in procs])
    for p in procs:
        p.communicate(timeout=60)
    assert all(sum(w) == 1 for w in wins), [s for s, w in enumerate(wins) if sum(w) != 1]
    got = [{s for s, w in enumerate(wins) if w[i]} for i in range(2)]
    assert got[0] | got[1] == set(range(300)) and not got[0] & got[1]


def test_claim_of_dead_process_is_stale_and_taken_over(tmp_path: Path) -> None:
    proc = _claimer(tmp_path, "board.try_claim(0); os._exit(0)  # dies holding the claim\n")
    proc.wait(timeout=60)
    me = ClaimBoard(tmp_path, Owner.current(run="me"), lease_s=3600, slurm=SlurmJobs())
    info = me.read(0)
    assert info is not None and info.owner.pid == proc.pid
    assert me.stale_reason(info) == f"owner process {proc.pid} on this host is gone"
    claim, why = me.acquire([0])
    assert claim.shard == 0 and why.startswith(f"owner process {proc.pid}")
    assert me.read(0).owner.pid == os.getpid()


def test_live_claim_is_kept_until_its_lease_expires_then_taken_over(tmp_path: Path) -> None:
    proc = _claimer(tmp_path, """
        claim = board.try_claim(5)
        print("claimed", flush=True)
        sys.stdin.readline()
        print(json.dumps(claim.held()), flush=True)
        claim.release()  # no longer ours: must not remove the new owner's claim
        print("released", flush=True)
        sys.stdin.readline()
    """)
    assert proc.stdout.readline().strip() == "claimed"
    me = ClaimBoard(tmp_path, Owner.current(run="me"), lease_s=60)
    assert me.try_claim(5) is None
    assert me.acquire([5]) is None  # owner alive, heartbeat fresh
    old = time.time() - 120
    os.utime(tmp_path / "5", (old, old))  # its heartbeat stopped two minutes ago
    assert me.stale_reason(me.read(5)).startswith("no heartbeat for 1")
    claim, why = me.acquire([5])
    assert claim is not None and why.startswith("no heartbeat")
    proc.stdin.write("\n")
    proc.stdin.flush()
    assert json.loads(proc.stdout.readline()) is False  # the old owner sees it lost the claim
    assert proc.stdout.readline().strip() == "released"
    assert claim.held()
    claim.release()
    assert not (tmp_path / "5").exists()
    proc.communicate("\n", timeout=30)


def test_heartbeat_keeps_a_held_claim_fresh(tmp_path: Path) -> None:
    board = ClaimBoard(tmp_path, Owner.current(run="me"), lease_s=60)
    claim = board.try_claim(0)
    old = time.time() - 120
    os.utime(tmp_path / "0", (old, old))
    beat = Heartbeat(interval_s=0.05)
    beat.lease = claim
    try:
        deadline = time.monotonic() + 10
        while board.stale_reason(board.read(0)) is not None:
            assert time.monotonic() < deadline, "the heartbeat did not refresh the claim"
            time.sleep(0.05)
    finally:
        beat.close()
    assert not beat.lost


def test_requeued_job_clears_claims_of_its_earlier_run(tmp_path: Path) -> None:
    first = Owner("node1", 11, run="42", job="43", task="42_1", restart=0)
    again = dataclasses.replace(first, pid=12, restart=1)
    other = Owner("node2", 13, run="42", job="44", task="42_2", restart=0)
    ClaimBoard(tmp_path, first).try_claim(1)
    ClaimBoard(tmp_path, other).try_claim(2)
    board = ClaimBoard(tmp_path, again, slurm=SlurmJobs())
    assert board.clear_own_leftovers() == [1]
    assert not (tmp_path / "1").exists() and (tmp_path / "2").exists()


def test_failures_are_counted_per_run(tmp_path: Path) -> None:
    a = ClaimBoard(tmp_path, Owner("h", 1, run="run-a"))
    b = ClaimBoard(tmp_path, Owner("h", 2, run="run b"))
    a.record_failure(3, "boom 1")
    a.record_failure(3, "boom 2")
    b.record_failure(4, "other")
    assert a.failures("run-a") == {3: ["boom 1", "boom 2"]}
    assert a.failures() == {3: ["boom 1", "boom 2"], 4: ["other"]}


def _tiny_store(path: Path) -> CEStore:
    layout = Layout(num_sources=4, ces_per_source=2, num_classes=2, image_shape=(1, 2, 2),
                    shard_size=2)
    return create_or_open(path, {"seed": 0}, layout, generation_arrays(), {"config": {}})


def _shard_data(n: int = 2) -> dict[str, np.ndarray]:
    return {"source/x": np.zeros((n, 1, 2, 2), np.float32), "source/y": np.zeros(n, np.int64),
            "source/index": np.arange(n), "ce/x": np.ones((n, 2, 1, 2, 2), np.float32),
            "ce/target": np.zeros((n, 2), np.int64), "ce/l2": np.ones((n, 2), np.float32),
            "ce/l0": np.ones((n, 2), np.float32)}


def test_stop_signal_abandons_a_computing_shard_but_not_a_commit(tmp_path: Path) -> None:
    previous = signal.getsignal(signal.SIGUSR2)
    try:
        stopper = Stopper().install([signal.SIGUSR2])
        with pytest.raises(Interrupted):
            with stopper.computing():
                os.kill(os.getpid(), signal.SIGUSR2)
                time.sleep(5)  # computing: the signal interrupts this
        assert stopper.reason == "SIGUSR2"

        store = _tiny_store(tmp_path / "s.zarr")
        stopper = Stopper().install([signal.SIGUSR2])
        real = store.remove_leftovers

        def signal_mid_commit(shard, names):  # called inside CEStore.write_shard
            os.kill(os.getpid(), signal.SIGUSR2)
            time.sleep(0.2)
            real(shard, names)

        store.remove_leftovers = signal_mid_commit
        with stopper.computing():
            store.write_shard(1, _shard_data())  # completes despite the signal
        assert stopper.reason == "SIGUSR2"
        assert store.done().tolist() == [False, True]
        task = ShardTask(KINDS["generate"], str(store.storage), {})
        assert pending_shards(store, task) == [0]
    finally:
        signal.signal(signal.SIGUSR2, previous)


def test_retry_rule_is_the_same_as_on_ray(tmp_path):
    board = ClaimBoard(tmp_path, Owner.current(run="r"))
    board.record_failure(1, "worker lost: no heartbeat")
    board.record_failure(1, "worker lost: owner job is not running")
    board.record_failure(2, "ShardError: 3 CEs are not finite", raised=True)
    assert board.given_up("r", max_retries=2) == {2: "ShardError: 3 CEs are not finite"}
    assert board.given_up("r", max_retries=1) == {1: "worker lost: owner job is not running",
                                                   2: "ShardError: 3 CEs are not finite"}
    assert board.given_up("another run", max_retries=0) == {}


def test_a_claim_without_heartbeat_for_the_shard_timeout_is_stale(tmp_path):
    """The SLURM watchdog: a hung owner (stopped: no heartbeat) loses its claim after the
    shard timeout, long before the lease ends."""
    import os
    import time

    owner = ClaimBoard(tmp_path, Owner("elsewhere", 1, run="r"), lease_s=600)
    assert owner.try_claim(3) is not None
    me = ClaimBoard(tmp_path, Owner.current(run="r"), lease_s=600)
    old = time.time() - 30
    os.utime(tmp_path / "3", (old, old))
    assert me.stale_reason(me.read(3)) is None  # no shard timeout yet: only the lease
    me.hung_s = 20.0
    assert me.stale_reason(me.read(3)).startswith("hung: no heartbeat for 3")


def test_a_task_abandons_a_shard_whose_claim_was_taken_over(tmp_path):
    """A stopped task that is continued after its claim was taken over (its owner looked
    hung) abandons the shard in hand instead of writing it beside the task that took it."""
    import signal
    import threading
    import time

    from cejobs.backends.slurm.claims import Heartbeat
    from cejobs.backends.slurm.loop import Abandoned, Stopper

    stopper = Stopper()
    on_lost = stopper.abandon_on()
    try:
        mine = ClaimBoard(tmp_path, Owner("here", 1, run="r")).try_claim(0)
        beat = Heartbeat(interval_s=0.05, on_lost=on_lost)
        beat.lease = mine
        other = ClaimBoard(tmp_path, Owner("there", 2, run="r"))
        with pytest.raises(Abandoned), stopper.computing():
            threading.Thread(target=lambda: other.take_over(other.read(0))).start()
            deadline = time.monotonic() + 60  # liveness bound: the heartbeat sees it in ~0.05 s
            while time.monotonic() < deadline:
                time.sleep(0.01)
        assert beat.lost == {0}
        beat.close()
    finally:
        signal.signal(signal.SIGALRM, signal.SIG_DFL)
