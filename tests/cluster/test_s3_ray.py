"""A Ray run whose workers share nothing with the driver but the S3 endpoint.

The head has no CPUs, so every shard runs on a second node, started with `ray start` in its
own mount namespace (`unshare --mount`): the driver's folder (checkpoint, dataset, cwd) and
the head's temp dir are hidden behind empty tmpfs mounts, and the node has its own temp dir,
cwd and HOME. The checkpoint bytes and the dataset reach its worker only through Ray's object
store (cejobs/jobs/worker_inputs.py), the store only through the moto server on 127.0.0.1.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from cejobs.data import load_dataset
from tests.conftest import REPO, run_module
from tests.ray_fixtures import AUTH_ENV, RAY_CLI, free_ports, kill_session, start_ray_cluster
from tests.s3_fixtures import clean_env
from tests.integration.test_generate import assert_same
from tests.integration.test_s3 import NAMES, s3_arrays

pytestmark = [pytest.mark.s3, pytest.mark.ray_cluster]


def _can_unshare() -> bool:
    if not shutil.which("unshare") or os.geteuid() != 0:
        return False
    return subprocess.run(["unshare", "--mount", "true"], capture_output=True).returncode == 0


def start_private_node(gcs: str, hide: list[Path], home: Path, env: dict) -> int:
    """`ray start` of a 1-CPU worker node in its own mount namespace; its session id."""
    ports = free_ports(7, span=30)
    start = [RAY_CLI, "start", "--address", gcs, "--num-cpus", "1", "--node-ip-address",
             "127.0.0.1", "--temp-dir", str(home / "ray"), "--node-manager-port", str(ports[0]),
             "--object-manager-port", str(ports[1]), "--dashboard-agent-listen-port",
             str(ports[2]), "--dashboard-agent-grpc-port", str(ports[3]),
             "--runtime-env-agent-port", str(ports[4]), "--metrics-export-port", str(ports[5]),
             "--min-worker-port", str(ports[6]), "--max-worker-port", str(ports[6] + 29),
             "--object-store-memory", str(100 * 2**20), "--disable-usage-stats"]
    script = " && ".join([*(f"mount -t tmpfs cejobs-hidden {shlex.quote(str(p))}" for p in hide),
                          *(f"test ! -e {shlex.quote(str(p / 'diffusion.pt'))}" for p in hide),
                          f"cd {shlex.quote(str(home))}", "exec " + shlex.join(start)])
    proc = subprocess.Popen(["unshare", "--mount", "--propagation", "private", "sh", "-c",
                             script], env=env, start_new_session=True,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    out, _ = proc.communicate(timeout=300)
    if proc.returncode != 0:
        kill_session(proc.pid)
        pytest.fail(f"worker node did not start ({proc.returncode}):\n{out[-3000:]}")
    return proc.pid


@pytest.mark.skipif(not _can_unshare(), reason="needs root and unshare --mount")
def test_ray_workers_sharing_only_the_s3_endpoint(s3, s3_env, tiny_models, tmp_path):
    driver = Path(tempfile.mkdtemp(prefix="cj-drv-", dir="/tmp"))
    node = Path(tempfile.mkdtemp(prefix="cj-node-", dir="/tmp"))
    try:
        driver.chmod(0o700)
        shutil.copy(tiny_models["diffusion"], driver / "diffusion.pt")
        shutil.copy(tiny_models["classifier"], driver / "classifier.pt")
        digits = load_dataset("digits")
        np.savez(driver / "digits.npz", x=digits.images(np.arange(30)).numpy(),
                 y=digits.labels[:30])
        args = ["--model", driver / "diffusion.pt", "--dataset", driver / "digits.npz",
                "--sources", "6", "--shard-size", "2", "--steps", "12", "--threads", "1",
                "--no-progress"]
        local = driver / "local.zarr"
        run_module("cejobs.generate", *args, "--backend", "local", "--store", local)
        clf = ["--classifier", f"tiny={driver / 'classifier.pt'}", "--no-figures",
               "--no-progress", "--threads", "1"]
        run_module("cejobs.evaluate", "--store", local, *clf, "--out", driver / "local.eval")

        url = s3.url("ray-private/run.zarr")
        with start_ray_cluster(num_cpus=0) as head:
            node_env = {**clean_env(s3.env), **AUTH_ENV, "HOME": str(node),
                        "PYTHONPATH": str(REPO), "RAY_worker_niceness": "0",
                        "RAY_USAGE_STATS_ENABLED": "0"}
            node_env.pop("RAY_ADDRESS", None)
            sid = start_private_node(head.gcs_address, [driver, head.temp_dir], node, node_env)
            try:
                env = {**clean_env(s3.env), **AUTH_ENV}
                env.pop("RAY_ADDRESS", None)
                ray_flags = ["--backend", "ray", "--ray-address", head.gcs_address]
                r = subprocess.run(
                    [sys.executable, "-m", "cejobs.generate", *map(str, args), *ray_flags,
                     "--store", url],
                    cwd=driver, env=env, capture_output=True, text=True, timeout=900)
                e = subprocess.run(
                    [sys.executable, "-m", "cejobs.evaluate", "--store", url, *clf, *ray_flags,
                     "--out", str(driver / "s3.eval")],
                    cwd=driver, env=env, capture_output=True, text=True, timeout=900)
            finally:
                kill_session(sid)
        assert r.returncode == 0, r.stderr[-3000:]
        assert "2 node(s)" in r.stderr  # the head (no CPUs) and the private node
        assert "3/3 shards done" in r.stdout
        assert s3.secret not in r.stdout + r.stderr
        g = zarr.open_group(str(local), mode="r")
        assert_same({n: np.asarray(g[n][:]) for n in NAMES}, s3_arrays(url))
        assert e.returncode == 0, e.stderr[-3000:]
        assert "2 node(s)" in e.stderr and s3.secret not in e.stdout + e.stderr
        evaluated = ("eval/tiny/source_prob", "eval/tiny/ce_prob", "eval/tiny/done")
        assert_same({n: np.asarray(g[n][:]) for n in evaluated}, s3_arrays(url, *evaluated))
    finally:
        shutil.rmtree(driver, ignore_errors=True)
        shutil.rmtree(node, ignore_errors=True)
