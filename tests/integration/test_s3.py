"""Stores on object storage (`--store s3://...`) against a real moto server on 127.0.0.1
(tests/s3_fixtures.py): generate, kill, resume, evaluate, verify and repair, racing drivers,
bad endpoints, buckets and credentials, and credentials kept out of logs and the store."""

from __future__ import annotations

import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr

from cejobs.store.location import location
from tests.conftest import REPO, run_module
from tests.gate import Gate
from tests.s3_fixtures import BUCKET, clean_env
from tests.integration.test_generate import arrays, assert_same, gen_args

pytestmark = pytest.mark.s3


NAMES = ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0",
         "shard/done")  # what test_generate.arrays compares


def s3_arrays(url: str, *names: str) -> dict[str, np.ndarray]:
    """Arrays of a store in the bucket (the caller has the s3_env fixture)."""
    g = zarr.open_group(location(url).zarr_store(read_only=True), mode="r")
    return {name: np.asarray(g[name][:]) for name in names or NAMES}


def run(module, *args, env, check=True, gate=None):
    return run_module(module, *args, env={**clean_env(env), **(gate.env if gate else {})},
                      check=check)


@pytest.fixture(scope="module")
def local_reference(tiny_models, tmp_path_factory):
    store = tmp_path_factory.mktemp("ref") / "ref.zarr"
    run_module("cejobs.generate", *gen_args(tiny_models, store, "--shard-size", "1"))
    return store


@pytest.fixture(scope="module")
def s3_store(s3, tiny_models, local_reference):
    """A finished store in the bucket, generated in one go (the tests below copy nothing: each
    that changes a store makes its own)."""
    url = s3.url("done/run.zarr")
    r = run("cejobs.generate", *gen_args(tiny_models, url, "--shard-size", "1"), env=s3.env)
    assert f"6/6 shards done in {url}" in r.stdout
    return url


def no_secret(s3, *texts: str) -> None:
    for text in texts:
        assert s3.secret not in text


def test_generate_equals_local_and_keeps_no_secret(s3, s3_env, s3_store, local_reference):
    assert_same(arrays(local_reference), s3_arrays(s3_store))
    meta = {k: v for k, v in s3.objects("done/run.zarr").items() if k.endswith(".json")}
    assert "done/run.zarr/zarr.json" in meta and len(meta) > 10
    no_secret(s3, *(v.decode() for v in meta.values()))
    assert not any(k.endswith(".partial") for k in s3.objects("done/run.zarr"))


def test_kill_then_resume_equals_local(s3, s3_env, tiny_models, local_reference, tmp_path):
    """SIGKILL while shard 2 waits at the test gate: shards 0 and 1 are in the bucket; the
    resume runs the other four, and the store equals the uninterrupted local one."""
    url = s3.url("killed/run.zarr")
    gate = Gate(tmp_path / "gate")
    gate.allow(0, 1)
    env = {**clean_env(s3.env), **gate.env, "PYTHONUNBUFFERED": "1"}
    log = open(tmp_path / "first.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "cejobs.generate",
                             *map(str, gen_args(tiny_models, url, "--shard-size", "1"))],
                            cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 600
        while 2 not in gate.waiting() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
        log.close()
    done = s3_arrays(url)["shard/done"]
    assert list(np.flatnonzero(done)) == [0, 1]
    r = run("cejobs.generate", *gen_args(tiny_models, url, "--shard-size", "1"), env=s3.env)
    assert "generated 80 CEs in 4 shards" in r.stdout
    assert_same(arrays(local_reference), s3_arrays(url))
    no_secret(s3, r.stdout, r.stderr, (tmp_path / "first.log").read_text())


def test_resume_refuses_other_configuration(s3, s3_store, tiny_models):
    before = s3.objects("done/run.zarr")
    r = run("cejobs.generate", *gen_args(tiny_models, s3_store, "--shard-size", "1", "--w", "2"),
            env=s3.env, check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "w: store has 15.0, this run has 2.0" in r.stderr
    assert s3.objects("done/run.zarr") == before


def test_verify_finds_missing_and_damaged_objects_resume_repairs(s3, s3_env, tiny_models,
                                                                  local_reference):
    url = s3.url("repair/run.zarr")
    run("cejobs.generate", *gen_args(tiny_models, url, "--shard-size", "1"), env=s3.env)
    client = s3.client()
    client.delete_object(Bucket=BUCKET, Key="repair/run.zarr/ce/x/c/1/0/0/0/0")
    key = "repair/run.zarr/ce/l2/c/4/0"
    body = client.get_object(Bucket=BUCKET, Key=key)["Body"].read()
    client.put_object(Bucket=BUCKET, Key=key, Body=body[:5])  # damaged
    r = run("cejobs.status", "--store", url, "--verify", env=s3.env, check=False)
    assert r.returncode == 1
    assert "shard 1: missing chunk ce/x/c/1/0/0/0/0" in r.stdout
    assert "shard 4: unreadable chunk ce/l2/c/4/0" in r.stdout
    assert "4/6 shards done" in run("cejobs.status", "--store", url, env=s3.env).stdout
    r = run("cejobs.generate", *gen_args(tiny_models, url, "--shard-size", "1"), env=s3.env)
    assert "in 2 shards" in r.stdout
    assert_same(arrays(local_reference), s3_arrays(url))
    r = run("cejobs.status", "--store", url, "--verify", env=s3.env)
    assert "all 6 done shards read back intact" in r.stdout


def test_two_drivers_at_once_make_one_store(s3, s3_env, tiny_models, local_reference, tmp_path):
    """Both drivers start on a URL where no store is; they race to create it (one root
    zarr.json, by conditional PUT), then for the driver lease (an object created the same
    way): the one that gets it runs while its worker waits at the gate, the other stops with
    one line. The result is one store, equal to a local run."""
    url = s3.url("race/run.zarr")
    gate = Gate(tmp_path / "gate")
    env = {**clean_env(s3.env), **gate.env, "PYTHONUNBUFFERED": "1"}
    procs = [subprocess.Popen([sys.executable, "-m", "cejobs.generate",
                               *map(str, gen_args(tiny_models, url, "--shard-size", "1"))],
                              cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    deadline = time.monotonic() + 600
    while not (gate.waiting() and any(p.poll() is not None for p in procs)) and (
            time.monotonic() < deadline):
        time.sleep(0.05)
    gate.open()
    outs = [p.communicate(timeout=600) for p in procs]
    assert sorted(p.returncode for p in procs) == [0, 2], outs
    refused = outs[[p.returncode for p in procs].index(2)][1]
    assert refused.count("\n") == 1 and "another generate driver is running on" in refused
    assert_same(arrays(local_reference), s3_arrays(url))
    roots = [k for k in s3.objects("race/") if k.endswith("/zarr.json") and k.count("/") == 2]
    assert roots == ["race/run.zarr/zarr.json"]


def test_creation_race_loser_writes_nothing(s3_env, tiny_models):
    """The conditional PUT of the root zarr.json decides: a driver with another configuration
    that comes second is refused and writes nothing; one with the same configuration whose
    rival died before writing the arrays' metadata writes it."""
    from cejobs.store.layout import Layout, generation_arrays
    from cejobs.errors import StoreError
    from cejobs.store.create import create_group_atomically, create_or_open

    url = s3_env.url("race-unit/run.zarr")
    layout = Layout(4, 2, 2, (1, 8, 8), 2)
    arrays_ = generation_arrays()
    meta = dict(format="cejobs-store-v1", identity={"seed": 0}, layout=layout.to_attrs())
    assert create_group_atomically(location(url), arrays_, layout, meta) is True
    assert create_group_atomically(location(url), arrays_, layout, meta) is False
    assert list(s3_env.objects("race-unit/")) == ["race-unit/run.zarr/zarr.json"]
    with pytest.raises(StoreError, match="seed: store has 0, this run has 1"):
        create_or_open(url, {"seed": 1}, layout, arrays_, {})
    assert list(s3_env.objects("race-unit/")) == ["race-unit/run.zarr/zarr.json"]
    store = create_or_open(url, {"seed": 0}, layout, arrays_, {})
    store.write_shard(1, {"ce/l2": np.ones((2, 2), np.float32)})
    assert store.done().tolist() == [False, True]
    from cejobs.store.repair import repair

    findings = [f.text for f in repair(store, decode=True).findings]
    assert findings and not [t for t in findings if "ce/l2" in t]  # its one array is whole


def test_evaluate_s3_store_equals_local(s3, s3_env, s3_store, local_reference, tiny_models,
                                        tmp_path):
    import shutil

    clf = f"tiny={tiny_models['classifier']}"
    local = tmp_path / "local.zarr"
    shutil.copytree(local_reference, local)
    run_module("cejobs.evaluate", "--store", local, "--classifier", clf, "--no-figures",
               "--out", tmp_path / "local.eval", "--no-progress")
    r = run("cejobs.evaluate", "--store", s3_store, "--classifier", clf, "--no-figures",
            "--out", tmp_path / "s3.eval", "--no-progress", env=s3.env)
    a = zarr.open_group(str(local), mode="r")
    names = ("eval/tiny/source_prob", "eval/tiny/ce_prob", "eval/tiny/done")
    b = s3_arrays(s3_store, *names)
    assert b["eval/tiny/done"].all()
    for name in names:
        np.testing.assert_array_equal(np.asarray(a[name][:]), b[name], name)
    assert (tmp_path / "s3.eval" / "summary.json").exists()
    no_secret(s3, r.stdout, r.stderr, (tmp_path / "s3.eval" / "report.md").read_text())


@pytest.mark.parametrize("case, message", [
    ("endpoint", "cannot reach http://127.0.0.1:"),
    ("bucket", "the bucket does not exist"),
    ("credentials", "the credentials were refused or are missing"),
])
def test_bad_object_storage_is_one_line_and_writes_nothing(s3, tiny_models, tmp_path, case,
                                                           message):
    from tests.s3_fixtures import free_port

    env, url = dict(s3.env), s3.url(f"bad-{case}/run.zarr")
    if case == "endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
        env["AWS_MAX_ATTEMPTS"] = "1"
    elif case == "bucket":
        url = s3.url("run.zarr", bucket="no-such-bucket")
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    before = s3.objects()
    r = run("cejobs.generate", *gen_args(tiny_models, url), env=env, check=False)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert message in r.stderr
    no_secret(s3, r.stdout, r.stderr)
    assert s3.objects() == before
    assert [b["Name"] for b in s3.client().list_buckets()["Buckets"]] == [BUCKET]


def test_slurm_refuses_object_storage_in_one_line(s3, tiny_models):
    url = s3.url("slurm/run.zarr")
    r = run("cejobs.generate", *gen_args(tiny_models, url, "--backend", "slurm"), env=s3.env,
            check=False)
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert "the slurm backend needs the store on a filesystem every node mounts" in r.stderr
    assert not s3.objects("slurm/")


@pytest.mark.parametrize("name", ["cluster.yaml", "cluster-aws.yaml"])
def test_ray_cluster_configs_are_valid_for_ray_up(name):
    """ray up's own schema check (the cloud one can't be started here)."""
    import yaml
    from ray.autoscaler._private.util import fillout_defaults, validate_config

    config = fillout_defaults(yaml.safe_load((REPO / "ray" / name).read_text()))
    validate_config(config)
    starts = " ".join(config["head_start_ray_commands"] + config["worker_start_ray_commands"])
    assert "RAY_AUTH_MODE=token" in starts and "--dashboard-host=127.0.0.1" in starts


def test_bench_store_and_scale_on_s3(s3_env, tmp_path):
    """`bench store` writes the CIFAR-sized shard to disk and S3 (both clients) and reads each
    back equal (it raises otherwise); `bench scale` plans a resume of a small done store."""
    from types import SimpleNamespace

    from cejobs.bench import s3 as bench_s3

    args = SimpleNamespace(moto=False, s3=s3_env.url("bench"), obstore=True, dir=str(tmp_path),
                           shard_seconds=90.0, shards=12)
    out = bench_s3.bench_store_targets(args)
    assert set(out["results"]) == {"local disk", "s3 (s3fs, the store)", "s3 (obstore)"}
    assert all(len(r["write_seconds"]) == 4 for r in out["results"].values())
    scale = bench_s3.bench_scale(args)
    assert scale["shards"] == 12 and scale["objects"] == 12 * 11 + 15  # 15: root, 3 groups, 11 arrays


def test_python_api_on_s3(s3_env, s3_store, local_reference):
    """cejobs.open_store and cejobs.generate take the URL as they take a path."""
    import cejobs

    data = cejobs.open_store(s3_store)
    local = cejobs.open_store(local_reference)
    np.testing.assert_array_equal(data.tree["ce"]["x"].values, local.tree["ce"]["x"].values)
    assert data.ces[local.ces.columns].equals(local.ces)  # (+ p_target_tiny once evaluated)
    store = cejobs.generate(store=s3_store, backend="local", progress=False,
                            **{k: v for k, v in data.store.config.items()
                               if k in ("model", "sources", "shard_size", "steps", "threads")})
    assert store.done().all()  # nothing to do: the same configuration, resumed
