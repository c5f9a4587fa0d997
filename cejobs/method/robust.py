"""Robust-classifier CEs, the paper's baseline (sec. 4; docs/math.md, "Robust-classifier CEs").

Normalised L2 gradient ascent on log p_c(x') from x' = x, clipped to [0, 1] after every step,
stopping per example as soon as p_c(x') >= threshold, or after `max_steps` steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cejobs.method.params import RobustParams
from cejobs.models.unet import at_least_fp32


@dataclass
class RobustCEs:
    x: Tensor  # (B, C, H, W) CEs in [0, 1]
    steps: Tensor  # (B,) int32 gradient steps taken
    reached: Tensor  # (B,) bool, p_target >= threshold at the end


def robust_ce(
    classifier: nn.Module,
    x: Tensor,
    target: Tensor,
    *,
    step_size: float = RobustParams.step_size,  # L2 length of every gradient step
    max_steps: int = RobustParams.max_steps,  # cap on steps per example
    threshold: float = RobustParams.threshold,  # stop once p_target reaches this
) -> RobustCEs:
    """CEs for images `x` in [0, 1] towards classes `target` with a (robust) classifier
    (the keyword defaults are RobustParams')."""
    x_ce = at_least_fp32(x.detach().clone())
    steps = torch.zeros(x.shape[0], dtype=torch.int32, device=x.device)
    rows = torch.arange(x.shape[0], device=x.device)
    for taken in range(max_steps + 1):
        x_ce.requires_grad_(True)
        with torch.enable_grad():
            log_p = torch.log_softmax(at_least_fp32(classifier(x_ce)), dim=1)[rows, target]
            (grad,) = torch.autograd.grad(log_p.sum(), x_ce)
        x_ce = x_ce.detach()
        active = log_p.detach().exp() < threshold
        if taken == max_steps or not bool(active.any()):
            break
        norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, *([1] * (x.dim() - 1)))
        step = step_size * grad / norm
        mask = active.view(-1, *([1] * (x.dim() - 1)))
        x_ce = torch.where(mask, (x_ce + step).clamp(0.0, 1.0), x_ce)
        steps += active.to(torch.int32)
    return RobustCEs(x=x_ce, steps=steps, reached=~active)
