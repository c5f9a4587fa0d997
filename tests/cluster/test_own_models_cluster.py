"""A diffusers model (docs/models.md) on the real clusters: a Ray job (the model's files
reach the actors through Ray's object store) and an `sbatch slurm/gen_ce.sh` array (tasks
load the folder from its path) each make the store of a `--backend local` run, bit for bit."""

from __future__ import annotations

import sys
import textwrap
import uuid
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.cluster.test_slurm import TASK_FLAGS, _job_env
from tests.conftest import REPO, run_module
from tests.slurm_fixtures import SlurmCluster

SOURCES, SHARD_SIZE, STEPS = 4, 2, 4
COMPARED = ("source/x", "source/y", "source/index", "ce/x", "ce/target", "ce/l2", "ce/l0",
            "shard/done")


def flags(model: Path, store: Path) -> list[str]:
    return ["--model", str(model), "--sources", str(SOURCES), "--shard-size", str(SHARD_SIZE),
            "--steps", str(STEPS), "--per-class", "1", "--store", str(store), "--no-progress"]


def assert_same_store(path: Path, reference: Path) -> None:
    a, b = zarr.open_group(str(path), mode="r"), zarr.open_group(str(reference), mode="r")
    for name in COMPARED:
        np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=name)
    assert a["shard/done"][...].all()


@pytest.fixture(scope="module")
def local_store(diffusers_models, tmp_path_factory) -> Path:
    """The reference: `--backend local` with one thread, like each Ray CPU actor and each
    SLURM task here."""
    store = tmp_path_factory.mktemp("own-local") / "local.zarr"
    run_module("cejobs.generate", "--backend", "local", "--threads", "1",
               *flags(diffusers_models["pipeline"], store))
    return store


@pytest.mark.ray_cluster
def test_ray_job_with_a_diffusers_model_equals_local(ray_cluster, diffusers_models,
                                                     local_store, tmp_path):
    store = tmp_path / "ray.zarr"
    sid = f"cejobs-own-{uuid.uuid4().hex[:8]}"
    entry = [sys.executable, "-m", "cejobs.generate", "--backend", "ray",
             *flags(diffusers_models["pipeline"], store)]
    r = ray_cluster.submit(entry, submission_id=sid)
    assert r.returncode == 0, r.stdout + r.stderr
    assert ray_cluster.jobs().get_job_info(sid).driver_exit_code == 0
    assert_same_store(store, local_store)


@pytest.mark.slurm
def test_sbatch_with_a_diffusers_model_equals_local(slurm_cluster: SlurmCluster,
                                                    diffusers_models, local_store, tmp_path):
    folder = tmp_path / "own model"
    folder.mkdir()
    store = folder / "sbatch.zarr"
    config = folder / "config.toml"
    config.write_text(textwrap.dedent(f"""\
        dataset = "digits"
        sources = {SOURCES}
        shard_size = {SHARD_SIZE}
        steps = {STEPS}
        per_class = 1
        threads = 1
        model = "{diffusers_models['pipeline']}"
    """))
    cluster = _job_env(slurm_cluster)
    job = cluster.sbatch(["--array=0-1", *TASK_FLAGS, str(REPO / "slurm" / "gen_ce.sh"),
                          str(config), "--store", str(store)], cwd=folder)
    states = cluster.wait(job, timeout=300)
    logs = sorted(folder.glob(f"cejobs-gen-{job}_*.out"))
    assert states == {f"{job}_0": "COMPLETED", f"{job}_1": "COMPLETED"}, \
        [p.read_text() for p in logs]
    assert_same_store(store, local_store)
