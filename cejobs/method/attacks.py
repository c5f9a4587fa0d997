"""PGD adversarial examples (Madry et al. 2018) in the L2 or the L-infinity threat model, used
by adversarial training and by its robust-accuracy evaluation (cejobs.train.classifier).

Both start at x (no random start) and run with the model in eval mode (BatchNorm running
statistics, no dropout). A step moves delta by `step_size` (default 2.5 eps / steps, as in the
`robustness` library) along the gradient of the summed cross entropy, normalised per example:
    l2:   delta += step_size * g / ||g||_2,   then delta *= min(1, eps / ||delta||_2)
    linf: delta += step_size * sign(g),       then delta = clamp(delta, -eps, eps)
and x + delta is then clipped to [0, 1]. In L-infinity the projection and the clip commute
(both per pixel), so the result equals the Adversarial Robustness Toolbox's PGD without random
start; in L2 it does wherever the clip is inactive (tests/unit/method/test_attacks.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

THREATS = ("l2", "linf")


def pgd(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    eps: float,
    steps: int = 8,
    step_size: float | None = None,
    threat: str = "l2",
) -> Tensor:
    """PGD adversarial examples of images x in [0, 1] against labels y, within the `threat`
    ball ("l2" | "linf") of radius eps in [0, 1] pixel units."""
    if threat not in THREATS:
        raise ValueError(f"threat must be one of {THREATS}, got {threat!r}")
    if eps <= 0 or steps <= 0:
        return x.detach()
    alpha = 2.5 * eps / steps if step_size is None else step_size
    was_training = model.training
    model.eval()
    x = x.detach()
    delta = torch.zeros_like(x)
    shape = (-1,) + (1,) * (x.ndim - 1)
    for _ in range(steps):
        delta.requires_grad_(True)
        loss = F.cross_entropy(model(x + delta).float(), y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        if threat == "l2":
            grad_norm = grad.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = delta.detach() + alpha * grad / grad_norm
            delta_norm = delta.flatten(1).norm(dim=1).clamp_min(1e-12).view(shape)
            delta = delta * (eps / delta_norm).clamp(max=1.0)  # project onto the L2 ball
        else:
            delta = (delta.detach() + alpha * grad.sign()).clamp(-eps, eps)
        delta = (x + delta).clamp(0.0, 1.0) - x  # stay a valid image
    model.train(was_training)
    return (x + delta).detach()


def pgd_l2(model: nn.Module, x: Tensor, y: Tensor, eps: float, steps: int = 8,
           step_size: float | None = None) -> Tensor:
    """L2 PGD (`pgd` with threat "l2")."""
    return pgd(model, x, y, eps, steps, step_size, threat="l2")
