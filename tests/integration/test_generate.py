"""`python -m cejobs.generate` end to end on a real store: contract, resume, refusal, status."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cejobs.store.format import LEFTOVER_AGE_S
from cejobs.store.store import CEStore
from tests.conftest import REPO, run_module
from tests.gate import Gate

STEPS = "12"


def gen_args(models, store, *extra) -> list[str]:
    return ["--backend", "local", "--model", models["diffusion"], "--sources", "6",
            "--shard-size", "2", "--steps", STEPS, "--store", store, "--no-progress",
            "--threads", "1", *extra]


def arrays(path) -> dict[str, np.ndarray]:
    g = zarr.open_group(str(path), mode="r")
    out = {}
    for name in ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0",
                 "shard/done"):
        out[name] = np.asarray(g[name][:])
    return out


def assert_same(a, b):
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def chunk_mtimes(path: Path) -> dict[str, int]:
    return {str(p.relative_to(path)): p.stat().st_mtime_ns
            for p in path.rglob("*") if p.is_file() and "/c/" in str(p.relative_to(path)) + "/"}


@pytest.fixture(scope="module")
def reference(tiny_models, tmp_path_factory):
    """An uninterrupted local run, the reference every other run must equal."""
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    r = run_module("cejobs.generate", *gen_args(tiny_models, store))
    assert f"3/3 shards done in {store}" in r.stdout
    assert "evaluate with: python -m cejobs.evaluate --store" in r.stdout
    return store


def test_store_contract(reference, tiny_models):
    g = zarr.open_group(str(reference), mode="r")
    n, k = 6, 20
    spec = {
        "source/x": ((n, 1, 8, 8), "float32", ("source", "channel", "height", "width")),
        "source/y": ((n,), "int64", ("source",)),
        "source/index": ((n,), "int64", ("source",)),
        "ce/x": ((n, k, 1, 8, 8), "float32", ("source", "ce", "channel", "height", "width")),
        "ce/target": ((n, k), "int64", ("source", "ce")),
        "ce/l2": ((n, k), "float32", ("source", "ce")),
        "ce/l0": ((n, k), "float32", ("source", "ce")),
        "shard/done": ((3,), "bool", ("shard",)),
    }
    for name, (shape, dtype, dims) in spec.items():
        arr = g[name]
        assert (arr.shape, str(arr.dtype), tuple(arr.metadata.dimension_names)) == \
            (shape, dtype, dims), name
        assert arr.chunks[0] == (2 if dims[0] == "source" else 1), name
    a = arrays(reference)
    assert a["shard/done"].all()
    np.testing.assert_array_equal(a["source/index"], np.arange(6))
    np.testing.assert_array_equal(a["ce/target"], np.tile(np.repeat(np.arange(10), 2), (6, 1)))
    assert a["ce/x"].min() >= 0 and a["ce/x"].max() <= 1
    # distances recomputed from the stored images (image space)
    diff = a["ce/x"] - a["source/x"][:, None]
    np.testing.assert_allclose(a["ce/l2"], np.sqrt((diff**2).sum(axis=(2, 3, 4))), rtol=1e-5)
    np.testing.assert_allclose(a["ce/l0"], (np.abs(diff) > 0.02).mean(axis=(2, 3, 4)), rtol=1e-6)
    attrs = dict(g.attrs)["cejobs"]
    assert attrs["format"] == "cejobs-store-v2" and attrs["version"] == "0.1.0"
    assert attrs["layout"] == dict(num_sources=6, ces_per_source=20, num_classes=10,
                                   image_shape=[1, 8, 8], shard_size=2)
    ident = attrs["identity"]
    assert (ident["method"], ident["w"], ident["sigma_ce"], ident["steps"]) == \
        ("boltzmann", 15.0, 0.2, int(STEPS))
    from cejobs.models.checkpoint import file_sha256
    assert ident["model_sha256"] == file_sha256(tiny_models["diffusion"])
    assert attrs["config"]["backend"] == "local" and attrs["config"]["store"] == str(reference)


def test_store_docs_examples_run(reference, tmp_path):
    """The zarr / xarray / pandas snippets of docs/store.md run against a real store."""
    (tmp_path / "runs").mkdir()
    os.symlink(reference, tmp_path / "runs" / "digits-boltzmann.zarr")
    blocks = re.findall(r"```python\n(.*?)```", (REPO / "docs/store.md").read_text(), re.S)
    assert len(blocks) == 4  # zarr, xarray, pandas, CEDataset
    for block in blocks:
        r = subprocess.run([sys.executable, "-c", block], cwd=tmp_path, capture_output=True,
                           text=True)
        assert r.returncode == 0, r.stderr


def test_resume_of_complete_store_does_nothing(reference, tiny_models):
    before = chunk_mtimes(reference)
    r = run_module("cejobs.generate", *gen_args(tiny_models, reference))
    assert "store complete" in r.stdout and "nothing to do" in r.stdout
    assert chunk_mtimes(reference) == before


def test_interrupted_run_resumes_to_the_same_store(reference, tiny_models, tmp_path):
    """SIGKILL while the run holds shard 2 at the test gate (tests/gate.py): shards 0 and 1
    are done, whatever the machine's speed, and the resume does the other four."""
    store = tmp_path / "killed.zarr"
    gate = Gate(tmp_path / "gate")
    gate.allow(0, 1)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **gate.env}
    proc = subprocess.Popen([sys.executable, "-m", "cejobs.generate",
                             *gen_args(tiny_models, store, "--shard-size", "1", "--steps", "40")],
                            cwd=REPO, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 600
        while 2 not in gate.waiting() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    st = CEStore.open(store)
    done_before = np.flatnonzero(st.done())
    assert 2 <= len(done_before) < 6
    mtimes = {(s, name): st.chunk_path(name, int(s)).stat().st_mtime_ns
              for s in done_before for name in ("ce/x", "ce/l2", "source/x", "shard/done")}

    r = run_module("cejobs.generate", *gen_args(tiny_models, store, "--shard-size", "1",
                                                "--steps", "40"))
    assert f"in {6 - len(done_before)} shards" in r.stdout
    st = CEStore.open(store)
    assert st.done().all()
    for s in done_before:  # finished shards were not redone
        for name in ("ce/x", "ce/l2", "source/x", "shard/done"):
            assert st.chunk_path(name, int(s)).stat().st_mtime_ns == mtimes[s, name]
    # the same run uninterrupted
    ref = tmp_path / "ref40.zarr"
    run_module("cejobs.generate", *gen_args(tiny_models, ref, "--shard-size", "1", "--steps", "40"))
    assert_same(arrays(ref), arrays(store))


def test_batch_size_does_not_change_ces(reference, tiny_models, tmp_path):
    store = tmp_path / "b7.zarr"
    run_module("cejobs.generate", *gen_args(tiny_models, store, "--batch-size", "7"))
    a, b = arrays(reference), arrays(store)
    np.testing.assert_allclose(a["ce/x"], b["ce/x"], atol=2e-5)  # float rounding only


@pytest.mark.parametrize("change, field", [
    (["--w", "2"], "w: store has 15.0, this run has 2.0"),
    (["--method", "gaussian"], "method: store has 'boltzmann', this run has 'gaussian'"),
    (["--seed", "1"], "seed: store has 0, this run has 1"),
])
def test_mismatch_refused_and_store_unchanged(reference, tiny_models, change, field):
    before = {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()}
    r = run_module("cejobs.generate", *gen_args(tiny_models, reference, *change), check=False)
    assert r.returncode == 2
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1
    assert field in r.stderr
    assert {p: p.read_bytes() for p in reference.rglob("*") if p.is_file()} == before


def test_other_checkpoint_refused(reference, tiny_models, tmp_path):
    import torch

    from cejobs.models.checkpoint import load_checkpoint, save_checkpoint
    ck = load_checkpoint(tiny_models["diffusion"])
    with torch.no_grad():
        next(ck.model.parameters()).add_(1.0)
    other = tmp_path / "other.pt"
    save_checkpoint(other, ck.model, kind="diffusion", arch=ck.arch, arch_kwargs=ck.arch_kwargs,
                    meta=ck.meta)
    args = gen_args(tiny_models, reference)
    args[args.index("--model") + 1] = str(other)
    r = run_module("cejobs.generate", *args, check=False)
    assert r.returncode == 2 and "model_sha256: store has" in r.stderr


@pytest.mark.parametrize("args, message", [
    (["--model", "{classifier}"], "error: "),
    (["--model", "/nonexistent/diffusion.pt"], "error: "),
    (["--dataset", "cifar10", "--data-root", "/nonexistent"], "cifar-10-batches-py"),
    (["--store", "/proc/forbidden/s.zarr"], "cannot write the store"),
    (["--indices", "0:5000"], "reaches past the train split"),
])
def test_bad_input_is_one_line(tiny_models, tmp_path, args, message):
    base = gen_args(tiny_models, tmp_path / "s.zarr")
    for i in range(0, len(args), 2):
        flag, value = args[i], args[i + 1].format(**{k: str(v) for k, v in tiny_models.items()})
        if flag in base:
            base[base.index(flag) + 1] = value
        else:
            base += [flag, value]
    r = run_module("cejobs.generate", *base, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.count("\n") == 1 and message in r.stderr
    assert not (tmp_path / "s.zarr").exists()


def test_status_and_verify_then_resume_redoes_that_shard(reference, tiny_models, tmp_path):
    import shutil

    store = tmp_path / "copy.zarr"
    shutil.copytree(reference, store)
    r = run_module("cejobs.status", "--store", store)
    assert "3/3 shards done (100%), 120/120 CEs" in r.stdout and "ETA 0m00s" in r.stdout
    st = CEStore.open(store)
    chunk = st.chunk_path("ce/x", 1)
    chunk.write_bytes(chunk.read_bytes()[:20])  # truncated by a crash mid-copy
    leftover = st.chunk_path("ce/l0", 2).with_name("0.0123abcd.partial")
    leftover.write_bytes(b"\0" * 8)
    old = time.time() - LEFTOVER_AGE_S - 1  # a write that died long ago
    os.utime(leftover, (old, old))
    r = run_module("cejobs.status", "--store", store, "--verify", check=False)
    assert r.returncode == 1
    assert "shard 1: unreadable chunk ce/x/c/1/0/0/0/0" in r.stdout
    assert "removed leftover ce/l0/c/2/0.0123abcd.partial" in r.stdout
    assert "2/3 shards done" in run_module("cejobs.status", "--store", store).stdout
    untouched = st.chunk_path("ce/x", 0).stat().st_mtime_ns
    r = run_module("cejobs.generate", *gen_args(tiny_models, store))
    assert "in 1 shards" in r.stdout
    assert st.chunk_path("ce/x", 0).stat().st_mtime_ns == untouched
    assert not leftover.exists()
    assert_same(arrays(reference), arrays(store))
    r = run_module("cejobs.status", "--store", store, "--verify")
    assert "all 3 done shards read back intact" in r.stdout


def test_status_counts_mid_run(reference, tmp_path):
    """Counts and ETA from the store's flags and shard timings while shards are missing and a
    driver runs (this process holds the generate lease)."""
    import shutil

    from cejobs.store.lease import DriverLease

    store = tmp_path / "mid.zarr"
    shutil.copytree(reference, store)
    CEStore.open(store).clear_done([1, 2])
    with DriverLease(CEStore.open(store), "generate"):
        r = run_module("cejobs.status", "--store", store)
    assert "1/3 shards done (33%), 40/120 CEs" in r.stdout
    m = re.search(r"([\d.]+) CE/s, ETA (\S+)", r.stdout)
    assert float(m[1]) > 0 and m[2] != "unknown"
