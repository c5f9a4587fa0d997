"""SLURM resources checked before the store is touched: a partition sinfo does not know, or
one without GPU gres for tasks that ask for GPUs, is one line and exit status 2."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO


@pytest.mark.slurm
def test_unknown_partition_is_refused_before_the_store(slurm_cluster, tiny_models, tmp_path):
    store = tmp_path / "p.zarr"
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", "--backend", "slurm",
                        "--partition", "nosuch", "--model", str(tiny_models["diffusion"]),
                        "--sources", "2", "--store", str(store), "--no-progress"],
                       cwd=REPO, env=slurm_cluster.env, capture_output=True, text=True,
                       timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: no SLURM partition 'nosuch' (sinfo lists ")
    assert r.stderr.count("\n") == 1 and not store.exists()
