"""Distances between sources and CEs, in image space (docs/math.md, "Distances")."""

from __future__ import annotations

import torch
from torch import Tensor

L0_THRESHOLD = 0.02  # an element counts as changed when |x - x_ce| > 0.02


def l2_distance(x: Tensor, x_ce: Tensor) -> Tensor:
    """||x - x_ce||_2 over all C*H*W elements; x broadcastable to x_ce (..., C, H, W)."""
    return (x_ce - x).flatten(-3).norm(dim=-1)


def l0_distance(x: Tensor, x_ce: Tensor, threshold: float = L0_THRESHOLD) -> Tensor:
    """Fraction of the C*H*W elements with |x - x_ce| > threshold."""
    changed = (x_ce - x).abs().flatten(-3) > threshold
    return changed.to(torch.float32).mean(dim=-1)
