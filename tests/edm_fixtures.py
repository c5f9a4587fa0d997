"""EDM reference outputs recorded once with NVlabs/edm's own code (docs/models.md, "EDM
networks", says how): two small VPPrecond(SongUNet) networks, 8x8x3, a conditional one
(label_dim 10) and an unconditional one, their weights, fixed inputs and EDM's outputs."""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

GOLDEN = Path(__file__).parent / "data" / "edm_golden.safetensors"


@lru_cache(maxsize=1)
def golden() -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """(tensors, metadata) of the golden file. Tensors: inputs.{x, x_denoised, sigma, labels
    (10 = no class), t}; {cond,uncond}.weights.<state_dict key>; {cond,uncond}.denoised =
    D(inputs.x_denoised; inputs.sigma, one-hot labels); {cond,uncond}.raw = F(inputs.x,
    999 inputs.t, one-hot labels). Metadata: edm_commit, {cond,uncond}.init_kwargs (JSON).
    Cached: do not change the tensors in place."""
    with safe_open(GOLDEN, "pt") as f:
        meta = f.metadata()
    return load_file(GOLDEN), meta


def golden_network(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    """(VPPrecond constructor arguments, state_dict) of the golden network `name`."""
    tensors, meta = golden()
    prefix = f"{name}.weights."
    state = {k[len(prefix):]: v for k, v in tensors.items() if k.startswith(prefix)}
    return json.loads(meta[f"{name}.init_kwargs"]), {k: v.clone() for k, v in state.items()}
