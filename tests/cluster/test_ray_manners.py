"""The Ray backend as a user on a shared machine sees it: its workers keep the driver's
niceness, Ray's token notice is not printed into the output, and `--device cuda` without GPUs
is refused before the store exists. A private local Ray, started by the driver."""

from __future__ import annotations

import logging
import subprocess
import sys

from cejobs.backends.ray.cluster import TOKEN_LOGGER, TokenNotice
from tests.conftest import REPO


def generate(*args: str, nice: int = 0) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "cejobs.generate", "--backend", "ray", *args]
    return subprocess.run(["nice", "-n", str(nice), *command], cwd=REPO, capture_output=True,
                          text=True, timeout=600)


def test_workers_keep_the_drivers_niceness_and_ray_says_nothing_about_tokens(tiny_models,
                                                                             tmp_path):
    r = generate("--model", str(tiny_models["diffusion"]), "--sources", "2", "--shard-size",
                 "2", "--steps", "3", "--workers", "1", "--store", str(tmp_path / "n.zarr"),
                 "--progress", nice=7)
    assert r.returncode == 0, r.stderr
    ready = [line for line in r.stderr.splitlines() if "ray: worker 0 ready on" in line]
    assert len(ready) == 1 and "1 thread(s), OpenMP " in ready[0], r.stderr
    assert ready[0].endswith(", nice 7)"), r.stderr
    assert "Token authentication" not in r.stderr + r.stdout


def test_device_cuda_without_gpus_is_refused_before_the_store(tiny_models, tmp_path):
    store = tmp_path / "gpu.zarr"
    r = generate("--model", str(tiny_models["diffusion"]), "--sources", "2", "--device",
                 "cuda", "--store", str(store), "--no-progress")
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines()[-1] == (
        "error: --device cuda, but the Ray cluster has no GPUs; use --device auto or cpu")
    assert not store.exists()


def test_token_notice_is_said_once_in_our_words(caplog):
    caplog.set_level(logging.DEBUG, logger="cejobs")
    ray_logger = logging.getLogger(TOKEN_LOGGER)
    TokenNotice.said = False
    for _ in range(2):  # two connections in one process
        notice = TokenNotice()
        ray_logger.addFilter(notice)
        try:
            ray_logger.warning("Token authentication is disabled for this Ray cluster. Anyone")
        finally:
            ray_logger.removeFilter(notice)
        notice.say("the Ray cluster at 10.0.0.1:6379")
    ours = [r for r in caplog.records if r.name.startswith("cejobs")]
    assert [(r.levelno, r.getMessage()) for r in ours] == [(
        logging.WARNING, "ray: the Ray cluster at 10.0.0.1:6379 runs without token "
        "authentication: anyone who can reach its ports can run code on it; set "
        "RAY_AUTH_MODE=token on the cluster (ray/README.md)")]
    assert not [r for r in caplog.records if r.name == TOKEN_LOGGER]
