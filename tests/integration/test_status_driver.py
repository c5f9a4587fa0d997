"""`status` knows the driver: running (fresh heartbeat), stalled (old heartbeat) or none (no
lease, or its process is gone); the ETA only while one runs; `--json` for scripts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time

import pytest

import cejobs
from cejobs.cli import exit_status, status_main
from cejobs.drivers.status import STALLED_S
from cejobs.hosts import process_identity
from cejobs.store.lease import DriverLease
from cejobs.store.store import CEStore


@pytest.fixture(scope="module")
def half_done(tiny_models, tmp_path_factory):
    """A store of 2 shards, shard 1 not done."""
    path = tmp_path_factory.mktemp("status") / "half.zarr"
    cejobs.generate(backend="local", model=str(tiny_models["diffusion"]), sources=4,
                    shard_size=2, steps=12, store=str(path), progress=False, threads=1)
    CEStore.open(path).clear_done([1])
    return path


def status(path, *flags, capsys) -> tuple[int, str]:
    code = exit_status(status_main, ["--store", str(path), *flags])
    return code, capsys.readouterr().out


def test_no_driver_no_eta(half_done, capsys):
    code, out = status(half_done, "--json", capsys=capsys)
    doc = json.loads(out)
    assert code == 0
    assert (doc["shards_done"], doc["shards_total"], doc["ces_done"], doc["ces_total"]) == (
        1, 2, 40, 80)
    assert doc["rate_ces_per_s"] > 0 and doc["eta_seconds"] is None
    assert doc["drivers"]["generate"] == dict(kind="generate", state="none", host=None,
                                              pid=None, since=None, heartbeat_age_s=None)
    assert doc["damaged_done_flags"] == {} and doc["verify"] is None
    assert doc["method"] == "boltzmann" and doc["store"] == str(half_done)
    _, line = status(half_done, capsys=capsys)
    assert "1/2 shards done (50%), 40/80 CEs, " in line
    assert line.strip().endswith(" CE/s; no driver running") and "ETA" not in line
    code, out = status(half_done, "--verify", "--json", capsys=capsys)
    assert code == 0 and json.loads(out)["verify"] == dict(damaged=False, redo_shards=[],
                                                           summary=None, lines=[])


def test_running_driver_has_eta(half_done, capsys):
    with DriverLease(CEStore.open(half_done), "generate") as lease:
        code, out = status(half_done, "--json", capsys=capsys)
        _, line = status(half_done, capsys=capsys)
    doc = json.loads(out)["drivers"]["generate"]
    assert (doc["state"], doc["pid"], doc["host"]) == ("running", os.getpid(),
                                                       process_identity()["host"])
    assert doc["since"] == lease.me["since"]
    assert json.loads(out)["eta_seconds"] > 0
    assert ", ETA " in line and f"generate driver on {doc['host']} (pid {os.getpid()}" in line
    assert line.strip().endswith(") running")


def test_stalled_driver_no_eta(half_done, capsys):
    with DriverLease(CEStore.open(half_done), "generate") as lease:
        lease._heartbeat.close()  # the driver hangs: no more heartbeats
        old = time.time() - STALLED_S - 10
        os.utime(half_done / "leases" / "generate.json", (old, old))
        _, out = status(half_done, "--json", capsys=capsys)
        _, line = status(half_done, capsys=capsys)
    doc = json.loads(out)
    assert doc["drivers"]["generate"]["state"] == "stalled"
    assert doc["drivers"]["generate"]["heartbeat_age_s"] >= STALLED_S + 10
    assert doc["eta_seconds"] is None and "ETA" not in line and line.strip().endswith("stalled")


def test_driver_whose_process_is_gone_is_none(half_done, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    (half_done / "leases").mkdir()
    (half_done / "leases" / "evaluate.json").write_text(json.dumps(
        {**process_identity(), "pid": int(dead), "since": time.time(), "token": "t"}))
    try:
        _, out = status(half_done, "--json", capsys=capsys)
    finally:
        (half_done / "leases" / "evaluate.json").unlink()
        (half_done / "leases").rmdir()
    assert json.loads(out)["drivers"]["evaluate"]["state"] == "none"
