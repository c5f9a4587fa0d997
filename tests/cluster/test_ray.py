"""The Ray backend on a real local cluster: `ray job submit`, worker death, stop and resubmit,
a NaN shard, an unwritable store, one worker per (fake) GPU, and evaluation on the cluster.

Every job runs the same tiny generation (6 shards) as one `--backend local` run, so each test
checks its store against that run array for array. The cluster tests are marked `ray_cluster`;
those at the top need no cluster. The planning helpers are tested in
tests/unit/backends/test_ray_actors.py.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch
import zarr

from cejobs.models import UNET_PRESETS, UNet
from cejobs.models.checkpoint import save_checkpoint
from cejobs.store.store import CEStore
from tests.conftest import run_module
from tests.gate import Gate

SHARDS, SHARD_SIZE, STEPS = 6, 2, 40  # about 2 s a shard on one thread of this machine
DATA_ARRAYS = ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0",
               "shard/done")


def gen_args(model: Path, store: Path, *extra: str, sources: int = SHARDS * SHARD_SIZE,
             steps: int = STEPS) -> list[str]:
    return ["--model", str(model), "--sources", str(sources), "--shard-size", str(SHARD_SIZE),
            "--steps", str(steps), "--store", str(store), "--no-progress", *extra]


def job(*args: str) -> list[str]:
    """The entrypoint of a generate job (this interpreter: the cluster runs on this machine)."""
    return [sys.executable, "-m", "cejobs.generate", "--backend", "ray", *args]


def assert_same_store(path: Path, reference: Path) -> None:
    a, b = zarr.open_group(str(path), mode="r"), zarr.open_group(str(reference), mode="r")
    for name in DATA_ARRAYS:
        x, y = a[name][...], b[name][...]
        assert x.dtype == y.dtype and x.shape == y.shape, name
        assert np.array_equal(x, y), f"{name} differs from the --backend local run"
    assert a["shard/done"][...].all()


def done_count(store: Path) -> int:
    try:
        return int(zarr.open_array(str(store), path="shard/done", mode="r")[...].sum())
    except Exception:  # noqa: BLE001 - not created yet
        return 0


def wait_for(predicate, timeout: float, what: str, interval: float = 0.2):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


@pytest.fixture(scope="module")
def local_store(tiny_models, tmp_path_factory) -> Path:
    """The reference: the same run on `--backend local`, one thread like each Ray CPU actor
    (test_thread_count_does_not_change_ces checks that the thread count changes no bit)."""
    store = tmp_path_factory.mktemp("local") / "local.zarr"
    run_module("cejobs.generate", "--backend", "local", "--threads", "1",
               *gen_args(tiny_models["diffusion"], store))
    return store


@pytest.fixture(scope="module")
def nan_model(tmp_path_factory) -> Path:
    """A tiny diffusion checkpoint whose weights are all NaN: every CE comes out NaN."""
    kwargs = dict(UNET_PRESETS["tiny"])
    net = UNet(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(float("nan"))
    path = tmp_path_factory.mktemp("nan") / "nan.pt"
    save_checkpoint(path, net, kind="diffusion", arch="unet", arch_kwargs=kwargs,
                    meta={"dataset": "digits"})
    return path


# ---------------------------------------------------------------------- no cluster needed
def test_thread_count_does_not_change_ces(tmp_path):
    """1 and 2 torch threads give bit-equal CEs: Ray CPU actors (1 thread) and a local run
    (all cores) agree. Uses the digits preset, wide enough for torch to split its kernels."""
    from cejobs.cli import generate_main as main

    kwargs = dict(UNET_PRESETS["digits"])
    torch.manual_seed(0)
    net = UNet(**kwargs)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_(std=0.05)
    model = tmp_path / "digits.pt"
    save_checkpoint(model, net, kind="diffusion", arch="unet", arch_kwargs=kwargs,
                    meta={"dataset": "digits"})
    before = torch.get_num_threads()
    try:
        for threads in (1, 2):
            assert main(["--backend", "local", "--threads", str(threads), "--model", str(model),
                         "--sources", "4", "--shard-size", "4", "--steps", "3", "--no-progress",
                         "--store", str(tmp_path / f"t{threads}.zarr")]) == 0
    finally:
        torch.set_num_threads(before)
    a, b = (zarr.open_group(str(tmp_path / f"t{t}.zarr"), mode="r") for t in (1, 2))
    for name in ("ce/x", "ce/l2", "ce/l0"):
        assert np.array_equal(a[name][...], b[name][...]), name


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_ray_address_is_one_line(tiny_models, tmp_path):
    """Ray retries an address without end; cejobs probes it first and stops with one line."""
    address = f"127.0.0.1:{closed_port()}"
    r = run_module("cejobs.generate", "--backend", "ray", "--ray-address", address,
                   *gen_args(tiny_models["diffusion"], tmp_path / "r.zarr"), check=False,
                   timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        f"error: cannot reach the Ray cluster at {address} within 15 s "
        f"(check --ray-address / RAY_ADDRESS)"), r.stderr
    assert "Traceback" not in r.stderr


def test_stale_ray_start_record_starts_a_local_ray(monkeypatch):
    """A /tmp/ray/ray_current_cluster left by a cluster that is gone (Ray would connect to it
    and hang): connect() starts a private local Ray instead, and says why. ray.init is
    recorded, not run: the probe and the decision are what is tested."""
    import ray
    from ray._private import services

    from cejobs.backends.ray import cluster as ray_backend

    gone = f"127.0.0.1:{closed_port()}"
    calls = []
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(services, "canonicalize_bootstrap_address", lambda addr: addr or gone)
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kw: calls.append(kw))
    assert ray_backend.connect(None) == (f"started a local Ray (the last `ray start` on this "
                                         f"node, {gone}, is gone)")
    assert calls[0]["address"] == "local" and calls[0]["log_to_driver"] is False


# ---------------------------------------------------------------------- real cluster

@pytest.mark.ray_cluster
def test_job_submit_matches_local(ray_cluster, tiny_models, local_store, tmp_path):
    store = tmp_path / "ray.zarr"
    sid = f"cejobs-submit-{uuid.uuid4().hex[:8]}"
    r = ray_cluster.submit(job(*gen_args(tiny_models["diffusion"], store)), submission_id=sid)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"{SHARDS} of {SHARDS} shards to run on backend 'ray'" in out
    assert "joined the cluster" in out and "2 CPU worker(s)" in out, out
    assert ray_cluster.jobs().get_job_info(sid).driver_exit_code == 0
    assert_same_store(store, local_store)


@pytest.mark.ray_cluster
def test_unwritable_store_is_one_clear_line(ray_cluster, tiny_models, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the store's parent folder should be")
    sid = f"cejobs-unwritable-{uuid.uuid4().hex[:8]}"
    r = ray_cluster.submit(job(*gen_args(tiny_models["diffusion"], blocker / "s.zarr")),
                           submission_id=sid)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    line = (f"error: cannot write the store at {blocker / 's.zarr'}: {blocker} is a file, not "
            f"a folder (choose a writable --store on storage every worker shares)")
    assert line in out, out
    assert "Traceback" not in out, out
    assert ray_cluster.jobs().get_job_info(sid).driver_exit_code == 2


@pytest.mark.ray_cluster
def test_worker_killed_mid_shard_is_retried(ray_cluster, tiny_models, local_store, tmp_path):
    """Shard 0 is allowed through the test gate (tests/gate.py), the others wait there; the
    actor holding one is killed, so the kill lands mid-run on any machine."""
    store = tmp_path / "killed.zarr"
    gate = Gate(tmp_path / "gate")
    gate.allow(0)
    sid = f"cejobs-kill-{uuid.uuid4().hex[:8]}"
    r = ray_cluster.submit(job(*gen_args(tiny_models["diffusion"], store)), submission_id=sid,
                           wait=False, env_vars=gate.env)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: done_count(store) >= 1, 240, "a first shard")
    held = wait_for(gate.waiting, 240, "a worker holding a shard at the gate")
    victim = next(iter(held.values()))
    assert victim in {a["pid"] for a in ray_cluster.actors(state="ALIVE", detail=True)}
    done_at_kill = done_count(store)
    os.kill(victim, signal.SIGKILL)  # mid-shard: every actor has shards queued
    gate.open()
    assert ray_cluster.wait_job(sid) == "SUCCEEDED", ray_cluster.jobs().get_job_logs(sid)
    logs = ray_cluster.jobs().get_job_logs(sid)
    assert done_at_kill < SHARDS
    assert re.search(r"lost \(.*\); shards \[\d+(, \d+)*\] requeued; starting a replacement",
                     logs), logs
    assert f"{SHARDS}/{SHARDS} shards done" in logs
    assert_same_store(store, local_store)


@pytest.mark.ray_cluster
def test_job_stop_then_resubmit_runs_only_unfinished(ray_cluster, tiny_models, local_store,
                                                      tmp_path):
    store = tmp_path / "stopped.zarr"
    args = job(*gen_args(tiny_models["diffusion"], store))
    first = f"cejobs-stop-{uuid.uuid4().hex[:8]}"
    # one worker, and only shard 0 through the test gate: the stop lands mid-run on any
    # machine (workers is an execution field: the resubmission may use two)
    gate = Gate(tmp_path / "gate")
    gate.allow(0)
    r = ray_cluster.submit([*args, "--workers", "1"], submission_id=first, wait=False,
                           env_vars=gate.env)
    assert r.returncode == 0, r.stdout + r.stderr
    wait_for(lambda: done_count(store) >= 1, 240, "a first shard")
    r = ray_cluster.cli("job", "stop", "--address", ray_cluster.dashboard_url, first)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ray_cluster.wait_job(first) == "STOPPED"
    wait_for(lambda: not ray_cluster.actors(state="ALIVE"), 240, "the job's actors to exit")

    s = CEStore.open(store)
    done = [int(i) for i in np.flatnonzero(s.done())]
    assert 1 <= len(done) < SHARDS, f"stop came too late: {done}"
    chunks = [s.chunk_path(name, shard) for name in s.attrs["arrays"] for shard in done]
    mtimes = {p: p.stat().st_mtime_ns for p in chunks}

    second = f"cejobs-resume-{uuid.uuid4().hex[:8]}"
    r = ray_cluster.submit(args, submission_id=second)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    assert f"{SHARDS - len(done)} of {SHARDS} shards to run" in out, out
    assert {p: p.stat().st_mtime_ns for p in chunks} == mtimes  # done shards left alone
    assert_same_store(store, local_store)


@pytest.mark.ray_cluster
def test_nan_shard_is_reported_and_not_done(ray_cluster, nan_model, tmp_path):
    store = tmp_path / "nan.zarr"
    sid = f"cejobs-nan-{uuid.uuid4().hex[:8]}"
    r = ray_cluster.submit(job(*gen_args(nan_model, store, sources=2 * SHARD_SIZE, steps=2)),
                           submission_id=sid)
    out = r.stdout + r.stderr
    assert r.returncode != 0
    for shard in (0, 1):
        assert re.search(rf"shard {shard} failed: ShardError: shard {shard}: 40 of 40 CEs are "
                         rf"not finite", out), out
    assert "incomplete: 2 shard(s) not done" in out and "requeued" not in out, out
    assert ray_cluster.jobs().get_job_info(sid).driver_exit_code == 1
    assert not CEStore.open(store).done().any()


@pytest.mark.ray_cluster
def test_fake_gpus_get_one_worker_each(ray_gpu_cluster, tiny_models, tmp_path):
    """Placement, asserted through Ray's state API: the gate (tests/gate.py) holds every shard
    until both actors hold one, so two actors, each with 1 of the 2 GPUs, live at once."""
    store = tmp_path / "gpu.zarr"
    gate = Gate(tmp_path / "gate")
    sid = f"cejobs-gpu-{uuid.uuid4().hex[:8]}"
    r = ray_gpu_cluster.submit(job(*gen_args(tiny_models["diffusion"], store, sources=8,
                                             steps=5)), submission_id=sid, wait=False,
                               env_vars=gate.env)
    assert r.returncode == 0, r.stdout + r.stderr
    held = wait_for(lambda: len(set(gate.waiting().values())) == 2 and gate.waiting(), 240,
                    "two workers holding a shard each")
    actors = ray_gpu_cluster.actors(state="ALIVE", detail=True)
    assert len(actors) == 2 and {a["pid"] for a in actors} == set(held.values()), (actors, held)
    assert all(a["required_resources"].get("GPU") == 1 for a in actors), actors
    gate.open()
    assert ray_gpu_cluster.wait_job(sid) == "SUCCEEDED", ray_gpu_cluster.jobs().get_job_logs(sid)
    out = ray_gpu_cluster.jobs().get_job_logs(sid)
    assert "2 GPU worker(s), GPU 1, CPU 1" in out, out
    assert CEStore.open(store).done().all()


@pytest.mark.ray_cluster
def test_one_and_two_workers_give_equal_stores(ray_cluster, tiny_models, local_store, tmp_path):
    """The driver joins the cluster by address; 1 and 2 workers make the same store."""
    for workers in ("1", "2"):
        store = tmp_path / f"w{workers}.zarr"
        r = run_module("cejobs.generate", *gen_args(tiny_models["diffusion"], store),
                       "--ray-address", ray_cluster.gcs_address, "--workers", workers,
                       env=ray_cluster.env)
        assert f"{SHARDS}/{SHARDS} shards done" in r.stdout, r.stderr
        assert f"starting {workers} CPU worker(s)" in r.stderr, r.stderr
        assert_same_store(store, local_store)


@pytest.mark.ray_cluster
def test_evaluate_on_ray_equals_local(ray_cluster, tiny_models, local_store, tmp_path):
    """`evaluate --backend ray` on the cluster writes the same eval arrays and summary as a
    `--backend local` evaluation of the same store (one thread each)."""
    results = {}
    for backend, extra in (("local", []), ("ray", ["--ray-address", ray_cluster.gcs_address,
                                                   "--workers", "2"])):
        store = shutil.copytree(local_store, tmp_path / backend / "store.zarr")
        out = tmp_path / backend / "out"
        r = run_module("cejobs.evaluate", "--store", store, "--classifier",
                       f"tiny={tiny_models['classifier']}", "--out", out, "--backend", backend,
                       "--threads", "1", "--no-progress", *extra, env=ray_cluster.env)
        assert f"{SHARDS} shard(s) to evaluate" in r.stdout + r.stderr, r.stderr
        summary = json.loads((out / "summary.json").read_text())
        assert [s.pop("path") for s in summary["stores"]] == [str(store)]
        results[backend] = zarr.open_group(str(store), mode="r"), summary
    (local, local_summary), (ray_, ray_summary) = results["local"], results["ray"]
    for name in ("eval/tiny/source_prob", "eval/tiny/ce_prob", "eval/tiny/done"):
        np.testing.assert_array_equal(ray_[name][...], local[name][...], err_msg=name, strict=True)
    assert ray_["eval/tiny/done"][...].all()
    assert ray_summary == local_summary
