"""Shared fixtures: tiny seeded checkpoints, and the real local clusters (Ray, SLURM)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from cejobs.models import UNET_PRESETS, WRN_PRESETS, UNet, WideResNet
from cejobs.models.checkpoint import save_checkpoint

REPO = Path(__file__).resolve().parent.parent
pytest_plugins = ["tests.slurm_fixtures", "tests.ray_fixtures", "tests.multihost_fixtures",
                  "tests.s3_fixtures", "tests.diffusers_fixtures"]


def pytest_collection_modifyitems(config, items) -> None:
    """Tests marked `gpu` skip, with the reason printed by -ra, where CUDA is unavailable."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device (torch.cuda.is_available() is False)")
    for item in items:
        if item.get_closest_marker("gpu") is not None:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory) -> dict[str, Path]:
    """Seeded, untrained tiny digits models (8x8x1, 10 classes): fast and deterministic."""
    root = tmp_path_factory.mktemp("models")
    torch.manual_seed(0)
    unet_kwargs = dict(UNET_PRESETS["tiny"])
    unet = UNet(**unet_kwargs)
    for p in unet.parameters():  # untrained but non-trivial outputs
        torch.nn.init.normal_(p, std=0.05)
    save_checkpoint(root / "diffusion.pt", unet, kind="diffusion", arch="unet",
                    arch_kwargs=unet_kwargs, meta={"dataset": "digits"})
    wrn_kwargs = dict(WRN_PRESETS["tiny"])
    wrn = WideResNet(**wrn_kwargs)
    save_checkpoint(root / "classifier.pt", wrn, kind="classifier", arch="wideresnet",
                    arch_kwargs=wrn_kwargs, meta={"dataset": "digits"})
    return {"diffusion": root / "diffusion.pt", "classifier": root / "classifier.pt"}


def run_module(module: str, *args: str, env: dict | None = None, timeout: float = 600,
               check: bool = True) -> subprocess.CompletedProcess:
    """`python -m module args...` from the repo root, output captured."""
    full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})}
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO,
                       capture_output=True, text=True, env=full_env, timeout=timeout)
    if check and r.returncode != 0:
        raise AssertionError(f"{module} exited {r.returncode}\nstdout:\n{r.stdout}\n"
                             f"stderr:\n{r.stderr}")
    return r
