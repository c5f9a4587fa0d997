"""Tiny diffusers UNet2DModel folders for digits-shaped data (8x8x1, 10 classes), random
seeded weights, built and saved by the test session (no network access)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

# the DDPM schedule that is exactly cejobs' VP SDE (docs/models.md)
DDPM_SCHEDULER = {"_class_name": "DDPMScheduler", "num_train_timesteps": 1000,
                  "beta_start": 0.0001, "beta_end": 0.02, "beta_schedule": "linear",
                  "prediction_type": "epsilon", "trained_betas": None}


def tiny_unet(num_class_embeds: int | None, seed: int = 0):
    """A digits-shaped UNet2DModel with seeded normal(0, 0.05) weights (outputs not zero)."""
    from diffusers import UNet2DModel

    torch.manual_seed(seed)
    unet = UNet2DModel(sample_size=8, in_channels=1, out_channels=1, layers_per_block=1,
                       block_out_channels=(8, 16), norm_num_groups=4,
                       down_block_types=("DownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "UpBlock2D"),
                       num_class_embeds=num_class_embeds)
    for p in unet.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return unet.eval()


def save_pipeline(folder: Path, unet, scheduler: dict | None = None) -> Path:
    """A pipeline folder: model_index.json, unet/, scheduler/scheduler_config.json."""
    unet.save_pretrained(folder / "unet")
    (folder / "scheduler").mkdir(parents=True, exist_ok=True)
    (folder / "scheduler" / "scheduler_config.json").write_text(
        json.dumps(scheduler or DDPM_SCHEDULER))
    (folder / "model_index.json").write_text(json.dumps(
        {"_class_name": "DDPMPipeline", "unet": ["diffusers", "UNet2DModel"],
         "scheduler": ["diffusers", "DDPMScheduler"]}))
    return folder


@pytest.fixture(scope="session")
def diffusers_models(tmp_path_factory) -> dict[str, Path]:
    """"unet": a class-conditional UNet2DModel folder (10 classes + the null label);
    "pipeline": a DDPM pipeline folder around another; "cond" and "uncond": a pair without a
    null label (10 class embeddings; none)."""
    root = tmp_path_factory.mktemp("diffusers")
    tiny_unet(11, seed=0).save_pretrained(root / "unet")
    save_pipeline(root / "pipeline", tiny_unet(11, seed=1))
    tiny_unet(10, seed=2).save_pretrained(root / "cond")
    tiny_unet(None, seed=3).save_pretrained(root / "uncond")
    return {name: root / name for name in ("unet", "pipeline", "cond", "uncond")}
