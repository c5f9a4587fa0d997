"""SLURM: `sbatch slurm/gen_ce.sh` and `slurm/eval_ce.sh`, `--backend slurm` (submitit) for
generation and evaluation, and the claim of a SLURM job that ended (the claim rules without a
cluster are in tests/unit/backends/test_claims.py).

Every test runs on the real local single-node SLURM (slurm/local/cluster.sh, fixture
`slurm_cluster`): tiny seeded model, a config and stores
in a folder whose name has spaces, 1 CPU and a fake GPU per task. Every finished store must be
array-equal to a `--backend local` run of the same config (threads pinned to 1 in both).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import zarr

from cejobs.backends.slurm.claims import ClaimBoard, Owner, claims_root
from cejobs.store.store import CEStore
from tests.conftest import REPO, run_module
from tests.gate import Gate
from tests.slurm_fixtures import SlurmCluster

SOURCES, SHARD_SIZE, STEPS = 8, 2, 100  # 4 shards of 20 CEs, seconds each on 1 thread
SHARDS = SOURCES // SHARD_SIZE
TASK_FLAGS = ["--cpus-per-task=1", "--mem=1G", "--time=15"]  # the local node has 2 CPUs
COMPARED = ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0",
            "shard/done")
DONE_LINE = re.compile(r"cejobs: shard (\d+) done in")


# ============================================================================ helpers (SLURM)
def _config(folder: Path, model: Path) -> Path:
    config = folder / "tiny config.toml"
    config.write_text(textwrap.dedent(f"""\
        dataset = "digits"
        sources = {SOURCES}
        shard_size = {SHARD_SIZE}
        steps = {STEPS}
        per_class = 1
        threads = 1
        model = "{model}"
        store = "{folder / 'default store.zarr'}"
    """))
    return config


@pytest.fixture(scope="module")
def work(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """A folder with spaces holding the config, and the reference store of a local run."""
    folder = tmp_path_factory.mktemp("slurm") / "dir with spaces"
    folder.mkdir()
    config = _config(folder, tiny_models["diffusion"])
    reference = folder / "reference.zarr"
    run_module("cejobs.generate", "--config", config, "--backend", "local", "--store", reference,
               "--no-progress", timeout=300)
    return {"folder": folder, "config": config, "reference": reference}


def _job_env(cluster: SlurmCluster, gate: Gate | None = None) -> SlurmCluster:
    """The cluster helper with an environment that jobs inherit: this Python and this repo
    (and the test gate of tests/gate.py, if given)."""
    env = {**cluster.env, "PYTHONPATH": str(REPO), "CEJOBS_PYTHON": sys.executable,
           "PYTHONUNBUFFERED": "1", **(gate.env if gate else {})}
    return dataclasses.replace(cluster, env=env)


def _assert_equal_stores(store: Path, reference: Path) -> None:
    a = zarr.open_group(str(store), mode="r")
    b = zarr.open_group(str(reference), mode="r")
    for name in COMPARED:
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name, strict=True)


def _done(store: Path) -> set[int]:
    try:
        return {int(s) for s in np.flatnonzero(CEStore.open(store).done())}
    except Exception:  # not created yet
        return set()


def _chunk_mtimes(store: Path, shards: set[int]) -> dict[str, int]:
    """mtime_ns of every chunk file of the given shards."""
    s = CEStore.open(store)
    return {f"{name}:{shard}": s.chunk_path(name, shard).stat().st_mtime_ns
            for name in s.attrs["arrays"] for shard in shards}


def _wait_until(what: str, condition, timeout: float, cluster: SlurmCluster, job: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not reached after {timeout}s; job {job}: "
                               f"{cluster.job_states(job)}")
        time.sleep(0.2)


def _done_counts(logs: list[Path]) -> dict[int, int]:
    """How many times each shard was reported done, over the given task logs."""
    counts: dict[int, int] = {}
    for log in logs:
        for m in DONE_LINE.finditer(log.read_text()):
            counts[int(m[1])] = counts.get(int(m[1]), 0) + 1
    return counts


def _submit(cluster: SlurmCluster, work: dict, store: Path, array: str) -> str:
    return cluster.sbatch([f"--array={array}", *TASK_FLAGS, str(REPO / "slurm" / "gen_ce.sh"),
                           str(work["config"]), "--store", str(store)], cwd=work["folder"])


def _task_logs(folder: Path, job: str) -> list[Path]:
    return sorted(folder.glob(f"cejobs-gen-{job}_*.out"))


def _summary_job(logs: list[Path]) -> str:
    pattern = re.compile(r"summary job (\d+) runs after")
    ids = {m[1] for log in logs for m in pattern.finditer(log.read_text())}
    assert len(ids) == 1, f"one summary job per array, got {ids}"
    return ids.pop()


# ============================================================================ sbatch
@pytest.mark.slurm
def test_sbatch_array_completes_equal_to_local_run(slurm_cluster: SlurmCluster, work) -> None:
    cluster = _job_env(slurm_cluster)
    store = work["folder"] / "sbatch store.zarr"
    job = _submit(cluster, work, store, "0-1")
    states = cluster.wait(job, timeout=240)
    logs = _task_logs(work["folder"], job)
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, \
        [p.read_text() for p in logs]
    _assert_equal_stores(store, work["reference"])
    assert _done_counts(logs) == {s: 1 for s in range(SHARDS)}  # each shard run once

    summary = _summary_job(logs)
    assert cluster.wait(summary, timeout=180) == {summary: "COMPLETED"}
    out = (work["folder"] / f"cejobs-gen-summary-{summary}.out").read_text()
    assert f"verify: all {SHARDS} done shards read back intact" in out
    assert f"{SHARDS}/{SHARDS} shards done (100%)" in out
    assert not (store / "claims").exists()  # cleaned up once complete


@pytest.mark.slurm
def test_sbatch_cancel_then_resubmit_runs_only_unfinished_shards(slurm_cluster: SlurmCluster,
                                                                 work) -> None:
    folder, store = work["folder"], work["folder"] / "cancelled store.zarr"
    gate = Gate(folder / "gate-cancel")  # shard 0 only: the cancel lands mid-run on any machine
    gate.allow(0)
    cluster = _job_env(slurm_cluster, gate)
    first = _submit(cluster, work, store, "0")
    _wait_until("shard 0 done, the next held at the gate", lambda: _done(store) and gate.waiting(),
                180, cluster, first)
    cluster.scancel(first)
    cluster.wait(first, timeout=240)
    done_before = _done(store)
    assert 1 <= len(done_before) < SHARDS
    assert not [p for p in (store / "claims/shard").iterdir() if p.name.isdigit()], \
        "scancel's SIGTERM releases the running shard's claim"
    mtimes = _chunk_mtimes(store, done_before)
    summary = _summary_job(_task_logs(folder, first))  # afterany: runs after the cancel too
    cluster.wait(summary, timeout=180)
    out = (folder / f"cejobs-gen-summary-{summary}.out").read_text()
    assert f"incomplete: {SHARDS - len(done_before)} shard(s) not done" in out

    second = _submit(_job_env(slurm_cluster), work, store, "0-1")
    states = cluster.wait(second, timeout=240)
    assert set(states.values()) == {"COMPLETED"}, states
    assert set(_done_counts(_task_logs(folder, second))) == set(range(SHARDS)) - done_before
    assert _chunk_mtimes(store, done_before) == mtimes  # finished shards were not rewritten
    _assert_equal_stores(store, work["reference"])


@pytest.mark.slurm
def test_sbatch_usr2_requeues_task_which_continues(slurm_cluster: SlurmCluster, work) -> None:
    folder, store = work["folder"], work["folder"] / "preempted store.zarr"
    gate = Gate(folder / "gate-usr2")  # the signal lands while shard 1 is held, on any machine
    gate.allow(0)
    cluster = _job_env(slurm_cluster, gate)
    job = _submit(cluster, work, store, "0")
    _wait_until("shard 0 done, the next held at the gate",
                lambda: _done(store) and gate.waiting(), 180, cluster, job)
    cluster.scancel("--signal=USR2", "--batch", f"{job}_0")  # what --signal=B:USR2@120 sends
    signalled = time.time()
    _wait_until("the requeue", lambda: "requeued job" in _task_logs(folder, job)[0].read_text(),
                240, cluster, job)
    gate.open()
    done_before = _done(store)
    mtimes = _chunk_mtimes(store, done_before)
    states = cluster.wait(job, timeout=240)
    assert states == {f"{job}_0": "COMPLETED"}

    log = _task_logs(folder, job)[0].read_text()
    abandoned = [int(m[1]) for m in re.finditer(r"shard (\d+) abandoned \(SIGUSR2\)", log)]
    assert len(abandoned) == 1 and abandoned[0] not in done_before, log
    assert "(restart 1)" in log  # the same task ran again after the requeue
    assert "Restarts=1" in cluster.run(["scontrol", "show", "job", f"{job}_0"]).stdout
    assert _done_counts([_task_logs(folder, job)[0]]) == {s: 1 for s in range(SHARDS)}, log
    assert _chunk_mtimes(store, done_before) == mtimes
    started = CEStore.open(store).read_rows("shard/started_at")
    assert started[abandoned[0]] > signalled  # redone from scratch after the restart
    _assert_equal_stores(store, work["reference"])


@pytest.mark.slurm
def test_stale_claim_of_an_ended_slurm_job_is_taken_over(slurm_cluster: SlurmCluster,
                                                         tmp_path: Path) -> None:
    job = slurm_cluster.sbatch(["--wrap", "true"], cwd=tmp_path)
    slurm_cluster.wait(job, timeout=240)
    gone = Owner("elsewhere", 1, run=job, job=job, task=None)
    ClaimBoard(tmp_path, gone).try_claim(0)
    me = ClaimBoard(tmp_path, Owner("here", 2, run="me"), lease_s=3600)
    assert me.stale_reason(me.read(0)) == f"owner SLURM job {job} is not running"
    assert me.acquire([0])[0].shard == 0


# ============================================================================ evaluation
def _evaluate_copy(work: dict, name: str, classifier: Path, *flags: str,
                   env: dict | None = None) -> tuple[Path, Path, list[str]]:
    """A copy of the reference store in its own folder, the evaluate arguments for it, and
    (when flags are given) the evaluation run with them; returns (store, out, args)."""
    folder = work["folder"] / f"eval {name}"
    store = Path(shutil.copytree(work["reference"], folder / "store.zarr"))
    out = folder / "eval out"
    args = ["--store", str(store), "--classifier", f"tiny={classifier}", "--out", str(out)]
    if flags:
        run_module("cejobs.evaluate", *args, *flags, "--no-progress", env=env, timeout=400)
    return store, out, args


def _assert_same_evaluation(store: Path, out: Path, ref_store: Path, ref_out: Path) -> None:
    a = zarr.open_group(str(store), mode="r")
    b = zarr.open_group(str(ref_store), mode="r")
    for name in ("eval/tiny/source_prob", "eval/tiny/ce_prob", "eval/tiny/done"):
        np.testing.assert_array_equal(a[name][:], b[name][:], err_msg=name, strict=True)
    assert a["eval/tiny/done"][:].all()
    summaries = []
    for path, where in ((out, store), (ref_out, ref_store)):
        summary = json.loads((path / "summary.json").read_text())
        assert [s.pop("path") for s in summary["stores"]] == [str(where)]
        summaries.append(summary)
    assert summaries[0] == summaries[1]


@pytest.mark.slurm
def test_sbatch_eval_ce_and_submitit_evaluate_equal_local(slurm_cluster: SlurmCluster, work,
                                                         tiny_models) -> None:
    """`sbatch slurm/eval_ce.sh` (2 array tasks, then its summary job) and `evaluate --backend
    slurm` write the same eval arrays and summary.json as a `--backend local` evaluation."""
    cluster = _job_env(slurm_cluster)
    clf = tiny_models["classifier"]
    ref_store, ref_out, _ = _evaluate_copy(work, "local", clf, "--backend", "local",
                                           "--threads", "1")

    store, out, args = _evaluate_copy(work, "sbatch", clf)
    job = cluster.sbatch(["--array=0-1", *TASK_FLAGS, str(REPO / "slurm" / "eval_ce.sh"), *args],
                         cwd=work["folder"])
    states = cluster.wait(job, timeout=240)
    logs = sorted(work["folder"].glob(f"cejobs-eval-{job}_*.out"))
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, \
        [p.read_text() for p in logs]
    assert _done_counts(logs) == {s: 1 for s in range(SHARDS)}  # each shard evaluated once
    summary = _summary_job(logs)
    assert cluster.wait(summary, timeout=180) == {summary: "COMPLETED"}
    printed = (work["folder"] / f"cejobs-eval-summary-{summary}.out").read_text()
    assert re.search(r"^store +tiny +8 ", printed, re.M), printed  # the terminal table's row
    _assert_same_evaluation(store, out, ref_store, ref_out)

    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONUNBUFFERED": "1"}
    store, out, _ = _evaluate_copy(
        work, "submitit", clf, "--backend", "slurm", "--workers", "2", "--slurm-cpus", "1",
        "--slurm-mem-gb", "1", "--timeout-min", "15",
        "--slurm-log-dir", str(work["folder"] / "eval submitit" / "logs"), env=env)
    _assert_same_evaluation(store, out, ref_store, ref_out)


# ============================================================================ submitit
@pytest.mark.slurm
def test_submitit_backend_survives_preemption_and_equals_local_run(slurm_cluster: SlurmCluster,
                                                                   work) -> None:
    from submitit.slurm.slurm import SlurmJob

    folder, store = work["folder"], work["folder"] / "submitit store.zarr"
    logs = folder / "submitit logs"
    gate = Gate(folder / "gate-submitit")  # shard 0 only, until the preempted task let go
    gate.allow(0)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **gate.env}
    driver = subprocess.Popen(
        [sys.executable, "-m", "cejobs.generate", "--config", str(work["config"]),
         "--backend", "slurm", "--store", str(store), "--workers", "2", "--slurm-cpus", "1",
         "--slurm-mem-gb", "1", "--timeout-min", "15", "--slurm-log-dir", str(logs),
         "--no-progress"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        claims = claims_root(store, "shard")

        def holder() -> str | None:  # an array task holding a shard at the gate, once one is done
            if not _done(store):
                return None
            for shard in gate.waiting():
                try:
                    return json.loads(claims.read(str(shard)))["task"]
                except (OSError, ValueError, KeyError):
                    continue
            return None

        deadline = time.monotonic() + 400
        while (task := holder()) is None:
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
            time.sleep(0.2)
        SlurmJob(folder=logs, job_id=task)._interrupt()  # SIGTERM, then SIGUSR2: preemption
        signalled = time.time()
        array, index = task.split("_")
        task_err = logs / f"{array}_{index}_0_log.err"
        while "abandoned (SIGUSR2)" not in (task_err.read_text() if task_err.exists() else ""):
            assert driver.poll() is None and time.monotonic() < deadline, driver.communicate()
            time.sleep(0.2)
        gate.open()
        out, err = driver.communicate(timeout=300)
    finally:
        if driver.poll() is None:
            driver.kill()
    assert driver.returncode == 0, err
    assert f"{SHARDS}/{SHARDS} shards done" in out

    task_log = task_err.read_text()
    abandoned = [int(m[1]) for m in re.finditer(r"shard (\d+) abandoned \(SIGUSR2\)", task_log)]
    assert len(abandoned) == 1, task_log
    assert f"requeued job {task}" in task_log
    counts = _done_counts(sorted(logs.glob(f"{array}_*_0_log.err")))
    assert counts == {s: 1 for s in range(SHARDS)}, counts  # nothing lost, nothing redone
    assert CEStore.open(store).read_rows("shard/started_at")[abandoned[0]] > signalled
    assert "Restarts=1" in slurm_cluster.run(["scontrol", "show", "job", task]).stdout
    _assert_equal_stores(store, work["reference"])
    assert not (store / "claims").exists()


@pytest.mark.slurm
def test_submitit_backend_exits_when_every_task_failed(slurm_cluster: SlurmCluster, work) -> None:
    store = work["folder"] / "failing store.zarr"
    r = run_module("cejobs.generate", "--config", work["config"], "--backend", "slurm",
                   "--store", store, "--workers", "1", "--slurm-cpus", "1", "--slurm-mem-gb", "1",
                   "--timeout-min", "15", "--device", "cuda:7", "--no-progress",  # no such GPU
                   env={"PYTHONPATH": str(REPO)}, timeout=300, check=False)
    assert r.returncode == 1, r.stderr
    assert f"0/{SHARDS} shards done" in r.stdout
    assert "not done when every task of array" in r.stderr
    assert "a task's error: " in r.stderr  # the worker's own error, from the claim records
    assert "run the same command to resume" in r.stderr
