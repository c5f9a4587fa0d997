"""The README's Ray commands, run verbatim on a machine where a default run has already left
`~/.ray/auth_token` (Ray 2.60 then turns token authentication on for every new head).

HOME is a fresh folder, so the token is this test's own, and so is Ray's temp dir (RAY_TMPDIR):
the default-shaped run then finds no record of another `ray start` on this node and starts its
own local Ray, as on a user's machine, and the block's `ray start` leaves its record there. The
block runs in a scratch folder holding a link to ray/, so its store does not land in the
checkout. Ray keeps its default ports, as a user's would; teardown kills exactly the processes
of the block's session.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest
import zarr

from tests.conftest import REPO, run_module
from tests.ray_fixtures import kill_session

MARKER = "<!-- tests/cluster/test_readme_ray.py runs this block verbatim -->"


def readme_block() -> str:
    text = (REPO / "README.md").read_text()
    after = text[text.index(MARKER) + len(MARKER):]
    return re.search(r"```bash\n(.*?)```", after, re.S)[1]


@pytest.mark.ray_cluster
def test_readme_ray_commands_work_after_a_default_run(tmp_path):
    home, scratch = tmp_path / "home", tmp_path / "checkout"
    home.mkdir()
    scratch.mkdir()
    (scratch / "ray").symlink_to(REPO / "ray")
    ray_tmp = Path(tempfile.mkdtemp(prefix="cj-rt-", dir="/tmp"))  # short: unix socket paths
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(HOME=str(home), PATH=f"{Path(sys.executable).parent}:{env.get('PATH', '')}",
               PYTHONUNBUFFERED="1", RAY_TMPDIR=str(ray_tmp))

    # a default-shaped run: generate on a private local Ray, which writes ~/.ray/auth_token
    # (`env` replaces os.environ whole: the session's test clusters set RAY_AUTH_MODE there)
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", "--sources", "2",
                        "--shard-size", "2", "--steps", "5", "--store",
                        str(tmp_path / "default.zarr"), "--no-progress"], cwd=REPO, env=env,
                       capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout + r.stderr
    assert (home / ".ray" / "auth_token").is_file(), r.stdout + r.stderr

    block = readme_block()
    proc = subprocess.Popen(["bash", "-euo", "pipefail", "-c", block], cwd=scratch, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=600)
    finally:
        kill_session(proc.pid)
        shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, out
    assert "2/2 shards done" in out, out

    # the same CEs as a local run of the same flags
    local = tmp_path / "local.zarr"
    run_module("cejobs.generate", "--backend", "local", "--threads", "1", "--sources", "4",
               "--shard-size", "2", "--steps", "50", "--store", local, "--no-progress")
    a = zarr.open_group(str(scratch / "runs" / "ray-try.zarr"), mode="r")
    b = zarr.open_group(str(local), mode="r")
    for name in ("source/x", "ce/x", "ce/target", "ce/l2", "ce/l0", "shard/done"):
        np.testing.assert_array_equal(a[name][...], b[name][...], err_msg=name, strict=True)
