"""The OpenMP wait setting of cejobs/threads.py reaches the process that runs the shards on
every backend: the local worker (the driver itself), a Ray actor on a real `ray start` cluster
(tests/ray_fixtures.py) and a SLURM task on the local SLURM (tests/slurm_fixtures.py). Each
worker reports the wait variables of its own environment when it starts."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from cejobs.threads import BOUNDED_WAIT, UNKNOWN_RUNTIME_WAIT, WAIT_VARIABLES, openmp_runtime
from tests.conftest import REPO

DEFAULT = "=".join(BOUNDED_WAIT.get(openmp_runtime() or "", UNKNOWN_RUNTIME_WAIT))
REPORTED = re.compile(r"thread\(s\), OpenMP ([^)\s,]+)")


def tiny_run(model: Path, store: Path, *backend: str, env: dict[str, str] | None = None,
             timeout: float = 300) -> subprocess.CompletedProcess:
    """A 4-source, 2-step generation; the environment has no wait variable unless `env`
    gives one."""
    full = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    full.update(PYTHONPATH=str(REPO), PYTHONUNBUFFERED="1", **(env or {}))
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", *backend, "--model", str(model),
                        "--sources", "4", "--shard-size", "2", "--steps", "2", "--store",
                        str(store), "--no-progress"], cwd=REPO, env=full, text=True,
                       capture_output=True, timeout=timeout)
    assert r.returncode == 0, r.stdout + r.stderr
    return r


def test_local_worker_gets_the_default_or_the_users_setting(tiny_models, tmp_path):
    model = tiny_models["diffusion"]
    r = tiny_run(model, tmp_path / "a.zarr", "--backend", "local")
    assert REPORTED.findall(r.stderr) == [DEFAULT]
    r = tiny_run(model, tmp_path / "b.zarr", "--backend", "local",
                 env={"GOMP_SPINCOUNT": "12345"})
    assert REPORTED.findall(r.stderr) == ["GOMP_SPINCOUNT=12345"]


@pytest.mark.ray_cluster
def test_ray_actors_get_the_default(ray_cluster, tiny_models, tmp_path):
    """A job submitted with ray/runtime_env.yaml, as docs/operations.md shows."""
    job = [sys.executable, "-m", "cejobs.generate", "--backend", "ray", "--model",
           str(tiny_models["diffusion"]), "--sources", "4", "--shard-size", "2", "--steps", "2",
           "--store", str(tmp_path / "ray.zarr"), "--no-progress"]
    r = ray_cluster.submit(job)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out
    ready = re.findall(r"worker \d+ ready on .*", out)
    assert ready and REPORTED.findall("\n".join(ready)) == [DEFAULT] * len(ready), out


@pytest.mark.slurm
def test_slurm_tasks_get_the_default(slurm_cluster, tiny_models, tmp_path):
    logs = tmp_path / "logs"
    tiny_run(tiny_models["diffusion"], tmp_path / "slurm.zarr", "--backend", "slurm",
             "--workers", "2", "--slurm-cpus", "1", "--slurm-mem-gb", "1", "--timeout-min", "10",
             "--slurm-log-dir", str(logs))
    reported = [v for log in sorted(logs.glob("*.err")) for v in REPORTED.findall(log.read_text())]
    assert reported and reported == [DEFAULT] * len(reported), reported
