"""cejobs across hosts: SLURM and Ray on three network-namespace hosts (scripts/hosts.sh),
with a node killed, a node cut off and a worker stopped (SIGSTOP) mid-run.

Every scenario runs the same small generation (4 shards) as one `--backend local` run and
checks its store against that run array for array, checks from the shard-write records of the
test hook that no shard was written by two workers at once, and finds the log line that names
the node (by address) and what happened. Shards wait at the test gate (tests/gate.py) until
each worker holds one, so what is running when a node fails never depends on timing.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import shutil
import signal
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import run_module
from tests.gate import Gate
from tests.multihost_fixtures import RAY_CLI, wait_for

pytestmark = pytest.mark.multihost
SOURCES, SHARD_SIZE, STEPS = 8, 2, 10
ARRAYS = ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0",
          "shard/done")
PY = {"CEJOBS_PYTHON": sys.executable}


def flags(model: Path, store: Path, *extra: str) -> list[str]:
    return ["--model", str(model), "--sources", str(SOURCES), "--shard-size", str(SHARD_SIZE),
            "--steps", str(STEPS), "--per-class", "1", "--threads", "1", "--store", str(store),
            "--no-progress", *extra]


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory) -> Path:
    store = tmp_path_factory.mktemp("reference") / "local.zarr"
    run_module("cejobs.generate", "--backend", "local", *flags(tiny_models["diffusion"], store))
    return store


def done(store: Path) -> bool:
    try:
        return bool(zarr.open_array(str(store), path="shard/done", mode="r")[...].all())
    except Exception:  # noqa: BLE001 - not created yet
        return False


def assert_same(store: Path, reference: Path, gate: Gate) -> None:
    a, b = zarr.open_group(str(store), mode="r"), zarr.open_group(str(reference), mode="r")
    for name in ARRAYS:
        assert np.array_equal(a[name][...], b[name][...]), f"{name} differs from the local run"
    gate.assert_one_writer_at_a_time()


def on_host(hosts, host: str, pid: int) -> bool:
    return pid in hosts.pids(host)


def both_waiting(hosts, gate: Gate) -> dict[str, int]:
    """host -> pid of a worker at the gate, once one waits on h1 and one on h2."""
    found = {}
    for pid in gate.waiting().values():
        for h in ("h1", "h2"):
            if on_host(hosts, h, pid):
                found[h] = pid
    return found if len(found) == 2 else {}


def text(*paths: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in paths if p.exists())


# ----------------------------------------------------------------------------- the harness
PROBE = ("import socket, sys\ntry:\n    socket.create_connection((sys.argv[1], 9), timeout=3)\n"
         "except ConnectionRefusedError:\n    print('reached')\nexcept OSError as e:\n"
         "    print('unreachable', e)\n")


def test_hosts_harness(hosts):
    """Hosts reach each other by address (a refused port answers), a cut host does not, the
    root namespace holds none of their addresses, and cleanup is idempotent, also for a set
    whose owner crashed (prune)."""
    h0 = hosts.addr("h0")
    assert hosts.run("h2", [sys.executable, "-c", PROBE, h0]).stdout.strip() == "reached"
    hosts.sh("cut", "h2")
    assert hosts.run("h2", [sys.executable, "-c", PROBE, h0]).stdout.startswith("unreachable")
    hosts.sh("heal", "h2")
    assert hosts.run("h2", [sys.executable, "-c", PROBE, h0]).stdout.strip() == "reached"
    root = subprocess.run(["ip", "-4", "addr"], capture_output=True, text=True).stdout
    assert h0.rsplit(".", 1)[0] not in root
    assert len(hosts.sh("status").splitlines()) == 3
    # a set left by a crashed session: its owner pid (in the name) is gone
    dead = subprocess.Popen(["true"])
    dead.wait()
    from tests.multihost_fixtures import Hosts

    orphan = Hosts(f"cjt{dead.pid}")
    orphan.sh("up", "2")
    hosts.sh("prune")
    assert orphan.sh("status", check=False) == f"cjt{dead.pid}: down\n"
    hosts.sh("down")
    hosts.sh("down")  # idempotent
    assert hosts.sh("status", check=False) == f"{hosts.name}: down\n"


# ----------------------------------------------------------------------------- SLURM
def submit_array(nodes, gate: Gate, store: Path, tiny_models, out: Path, *extra: str) -> str:
    env = {**gate.env, **PY, "CEJOBS_SUMMARY": "0"}
    return nodes.sbatch(["--array=0-1", "--cpus-per-task=1", "--mem=1000M", "--gres=gpu:1",
                         f"--output={out}/%x-%A_%a.out", "slurm/gen_ce.sh",
                         "configs/digits.toml", *flags(tiny_models["diffusion"], store, *extra)],
                        env=env)


def slurm_logs(out: Path) -> str:
    return text(*sorted(out.glob("*.out")))


def test_slurm_array_spreads_over_two_nodes(hosts, slurm_nodes, tiny_models, reference,
                                            tmp_path):
    gate, store = Gate(tmp_path / "gate"), tmp_path / "s.zarr"
    job = submit_array(slurm_nodes, gate, store, tiny_models, tmp_path)
    wait_for(lambda: both_waiting(hosts, gate), 300, "a task at the gate on each node")
    gate.open()
    wait_for(lambda: (s := slurm_nodes.states(job)) and all(v == "COMPLETED" for v in s.values()),
             300, "the array to complete")
    logs = slurm_logs(tmp_path)
    for h in ("h1", "h2"):  # each node ran a shard, and its log line says so by address
        assert re.search(rf"claimed shard \d+ \(job \S+ .* on \S+@{re.escape(hosts.addr(h))}:",
                         logs), logs
    assert_same(store, reference, gate)


def test_slurm_node_failure(hosts, slurm_nodes, tiny_models, reference, tmp_path):
    gate, store = Gate(tmp_path / "gate"), tmp_path / "s.zarr"
    submit_array(slurm_nodes, gate, store, tiny_models, tmp_path)
    wait_for(lambda: both_waiting(hosts, gate), 300, "a task at the gate on each node")
    hosts.sh("kill", "h2")  # slurmd, slurmstepd and the task holding a shard
    gate.open()
    wait_for(lambda: done(store), 400, "the store to be complete")
    h2 = re.escape(hosts.addr("h2"))
    assert re.search(rf"took over shard \d+: owner SLURM job \d+ is not running; was held by "
                     rf".* on \S+@{h2}:\d+", slurm_logs(tmp_path)), slurm_logs(tmp_path)
    assert_same(store, reference, gate)


def test_slurm_hung_shard_watchdog(hosts, slurm_nodes, tiny_models, reference, tmp_path):
    gate, store = Gate(tmp_path / "gate"), tmp_path / "s.zarr"
    submit_array(slurm_nodes, gate, store, tiny_models, tmp_path, "--shard-timeout", "20")
    stopped = wait_for(lambda: both_waiting(hosts, gate), 300, "a task at the gate on each node")
    os.kill(stopped["h2"], signal.SIGSTOP)  # hung, claim held, heartbeat silent
    gate.open()
    wait_for(lambda: done(store), 400, "the store to be complete")
    h2 = re.escape(hosts.addr("h2"))
    assert re.search(rf"took over shard \d+: hung: no heartbeat for \d+ s, over the shard "
                     rf"timeout 20 s; was held by .* on \S+@{h2}:{stopped['h2']}",
                     slurm_logs(tmp_path)), slurm_logs(tmp_path)
    assert_same(store, reference, gate)


@pytest.fixture
def ray_temp() -> Path:
    temp = Path(tempfile.mkdtemp(prefix="cjr-", dir="/tmp"))  # short: Ray's socket paths
    yield temp
    shutil.rmtree(temp, ignore_errors=True)


def test_slurm_ray_on_two_nodes(hosts, slurm_nodes, tiny_models, reference, tmp_path, ray_temp):
    gate, store = Gate(tmp_path / "gate"), tmp_path / "s.zarr"
    env = {**gate.env, **PY, "CEJOBS_RAY": RAY_CLI, "CEJOBS_RAY_LAUNCH": "srun",
           "RAY_AUTH_MODE": "disabled", "CEJOBS_RAY_TEMP_DIR": str(ray_temp),
           "RAY_USAGE_STATS_ENABLED": "0"}
    job = slurm_nodes.sbatch(["--nodes=2", "--gres=gpu:1", f"--output={tmp_path}/%x-%j.out",
                              "ray/slurm-ray.sh", "configs/digits.toml",
                              *flags(tiny_models["diffusion"], store)], env=env)

    def waiting():  # fails at once if the job ended (its log says why)
        started = (tmp_path / f"cejobs-ray-{job}.out").exists()
        assert not started or "RUNNING" in slurm_nodes.states(job).values(), slurm_logs(tmp_path)
        return both_waiting(hosts, gate)

    wait_for(waiting, 400, "a Ray worker at the gate on each node")
    gate.open()
    wait_for(lambda: set(slurm_nodes.states(job).values()) - {"RUNNING", "PENDING",
                                                               "CONFIGURING", "COMPLETING"},
             400, "the job to end")
    logs = slurm_logs(tmp_path)
    assert slurm_nodes.states(job) == {job: "COMPLETED"}, logs
    for h in ("h1", "h2"):
        assert re.search(rf"worker \d+ ready on \S+@{re.escape(hosts.addr(h))}:", logs), logs
    assert_same(store, reference, gate)


# ----------------------------------------------------------------------------- Ray
def submit_ray(ray_nodes, gate: Gate, store: Path, tiny_models, log: Path, *extra: str):
    return ray_nodes.submit([sys.executable, "-m", "cejobs.generate", "--backend", "ray",
                             *flags(tiny_models["diffusion"], store, *extra)], log,
                            env_vars=gate.env)


def finish(proc, log: Path) -> str:
    assert proc.wait(timeout=400) == 0, text(log)
    return text(log)


def lost_line(log: Path, addr: str, what: str) -> re.Match | None:
    return re.search(rf"worker \d+ on \S+@{re.escape(addr)}:\d+ lost \({what}.*\); shards "
                     rf"\[[\d, ]+\] requeued", text(log))


def test_ray_node_loss(hosts, ray_nodes, tiny_models, reference, tmp_path):
    gate, store, log = Gate(tmp_path / "gate"), tmp_path / "s.zarr", tmp_path / "job.log"
    proc = submit_ray(ray_nodes, gate, store, tiny_models, log)
    wait_for(lambda: both_waiting(hosts, gate), 400, "a worker at the gate on each node")
    hosts.sh("kill", "h2")  # the raylet, its workers, everything of host h2
    wait_for(lambda: lost_line(log, hosts.addr("h2"), ""), 120, "the loss of h2's worker")
    gate.open()
    finish(proc, log)
    assert_same(store, reference, gate)


def test_ray_partition_longer_than_health_check(hosts, ray_nodes, tiny_models, reference,
                                                tmp_path):
    gate, store, log = Gate(tmp_path / "gate"), tmp_path / "s.zarr", tmp_path / "job.log"
    proc = submit_ray(ray_nodes, gate, store, tiny_models, log)
    cut_off = wait_for(lambda: both_waiting(hosts, gate), 400, "a worker at the gate on each node")
    hosts.sh("cut", "h2")  # h2 keeps running, alone, with the shared files
    wait_for(lambda: lost_line(log, hosts.addr("h2"), ""), 120, "the loss of h2's worker")
    nodes = hosts.run("h0", [RAY_CLI, "list", "nodes", "--format", "json", "--address",
                             "http://127.0.0.1:8265"], env={"RAY_AUTH_MODE": "disabled"}).stdout
    assert {"node_ip": hosts.addr("h2"), "state": "DEAD"} in [
        {k: n[k] for k in ("node_ip", "state")} for n in json.loads(nodes)], nodes
    # the cut-off worker fenced itself before Ray gave its shard to another
    wait_for(lambda: not on_host(hosts, "h2", cut_off["h2"]), 60, "h2's worker to exit")
    assert "cannot reach the head" in text(*ray_nodes.temp.glob("h2/session_*/logs/worker-*.err"))
    hosts.sh("heal", "h2")
    gate.open()
    finish(proc, log)
    assert_same(store, reference, gate)


def test_ray_hung_shard_watchdog(hosts, ray_nodes, tiny_models, reference, tmp_path):
    gate, store, log = Gate(tmp_path / "gate"), tmp_path / "s.zarr", tmp_path / "job.log"
    proc = submit_ray(ray_nodes, gate, store, tiny_models, log, "--shard-timeout", "20")
    stopped = wait_for(lambda: both_waiting(hosts, gate), 400, "a worker at the gate on each node")
    os.kill(stopped["h2"], signal.SIGSTOP)
    gate.open()
    logs = finish(proc, log)
    h2 = re.escape(hosts.addr("h2"))
    assert re.search(rf"worker \d+ on \S+@{h2}:{stopped['h2']} lost \(hung: shard \d+ ran "
                     rf"\d+ s, over the --shard-timeout 20 s\); shards \[[\d, ]+\] requeued",
                     logs), logs
    assert_same(store, reference, gate)
