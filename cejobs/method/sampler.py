"""The augmented-score CE sampler (paper sec. 3, eqs. 3-5; docs/math.md).

Euler-Maruyama on the reverse VP SDE with the score

    s(x, t) = s_w(x, t) + s_N(x, t),   s_w = -eps_w / sigma_t,
    eps_w   = (1 + w) eps(x, t, c) - w eps(x, t, null)          (eq. 3)

where s_N is the diffused neighbourhood score centred on the source (eqs. 4, 5).
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import replace
from typing import Callable

import torch
from torch import Tensor, nn

from cejobs.method.params import SamplerParams
from cejobs.method.sde import VPSDE, time_grid
from cejobs.models.pair import EpsPair

RandnLike = Callable[[int, Tensor], Tensor]  # (step index, x) -> standard normal like x
Callback = Callable[[int, int], None]  # (steps done, steps in all)


def to_model_space(x: Tensor, centered: bool = True) -> Tensor:
    """Images in [0, 1] -> the diffusion model's space (m = 2x - 1 for centered models)."""
    return 2.0 * x - 1.0 if centered else x


def to_image_space(m: Tensor, centered: bool = True) -> Tensor:
    """Model space -> images, clipped to [0, 1]."""
    x = (m + 1.0) / 2.0 if centered else m
    return x.clamp(0.0, 1.0)


def guided_eps(
    net: nn.Module,
    x: Tensor,
    t: Tensor,
    target: Tensor,
    w: float,
    null_label: int,
    net_dtype: torch.dtype = torch.float32,
) -> Tensor:
    """Classifier-free guidance (eq. 3) with cond and uncond halves in one doubled batch; for
    a pair of networks (models/pair.py), the conditional network's output on the targets and
    the unconditional network's, one batch each, combined the same way."""
    autocast = (
        torch.autocast(device_type=x.device.type, dtype=net_dtype)
        if net_dtype not in (torch.float32, torch.float64)
        else nullcontext()
    )
    if isinstance(net, EpsPair):
        with autocast:
            eps_cond = net.cond(x, t, target)
            eps_uncond = net.uncond(x, t, torch.full_like(target, null_label))
        eps_cond, eps_uncond = eps_cond.to(x.dtype), eps_uncond.to(x.dtype)
        return (1.0 + w) * eps_cond - w * eps_uncond
    x2 = torch.cat([x, x])
    t2 = torch.cat([t, t])
    y2 = torch.cat([target, torch.full_like(target, null_label)])
    with autocast:
        eps = net(x2, t2, y2)
    eps_cond, eps_uncond = eps.to(x.dtype).chunk(2)
    return (1.0 + w) * eps_cond - w * eps_uncond


def em_step(x: Tensor, score: Tensor, beta, dt, z: Tensor) -> tuple[Tensor, Tensor]:
    """(x, x_mean) after one Euler-Maruyama step (score_sde EulerMaruyamaPredictor):
    drift = f - g^2 s with f = -beta x / 2 and g^2 = beta; beta and dt floats or tensors."""
    drift = -0.5 * beta * x - beta * score
    x_mean = x + drift * dt
    return x_mean + (beta * -dt) ** 0.5 * z, x_mean


@torch.no_grad()
def sample_ce(
    net: nn.Module,
    latents: Tensor,
    mu: Tensor,
    target: Tensor,
    params: SamplerParams | None = None,
    *,
    sde: VPSDE = VPSDE(),
    null_label: int | None = None,
    randn_like: RandnLike | None = None,
    callback: Callback | None = None,
    **changes,
) -> Tensor:
    """Counterfactual examples in model space (the last x_mean), shape of `latents`.

    net:      eps_theta(x, t, y), t in [0, 1], y in 0..C (C = null label by default).
    latents:  starting points x_1 ~ N(0, I), float32 (B, C, H, W).
    mu:       the sources in model space, broadcastable to latents.
    target:   (B,) class each CE is guided to.
    params:   the method's parameters (default SamplerParams()); `changes` replace some of
              them by field name: sample_ce(..., params, steps=20, method="gaussian").
    randn_like(i, x): the noise of step i (default: torch.randn_like).
    The SDE state and both scores stay in float32 (float64 when `latents` are float64, for
    references); only the network runs in `params.net_dtype`.
    """
    params = replace(params or SamplerParams(), **changes)
    neighborhood_score, sigma_ce, steps = params.score_fn, params.sigma_ce, params.steps
    if null_label is None:
        null_label = net.num_classes
    if randn_like is None:
        randn_like = lambda _i, x: torch.randn_like(x)  # noqa: E731
    x = latents if latents.dtype == torch.float64 else latents.float()
    mu = mu.to(x.dtype)
    dt = -1.0 / steps  # score_sde's step, not the grid spacing
    grid = time_grid(steps, params.eps)  # float64 on the host: per-step scalars stay exact
    alphas = sde.alpha(grid).to(device=x.device, dtype=x.dtype)
    sigmas = sde.sigma(grid).to(device=x.device, dtype=x.dtype)
    betas = sde.beta(grid).tolist()
    for i, t in enumerate(grid.tolist()):
        alpha_x, sigma_x, beta = alphas[i], sigmas[i], betas[i]
        t_batch = torch.full((x.shape[0],), t, dtype=x.dtype, device=x.device)

        eps_w = guided_eps(net, x, t_batch, target, params.w, null_label, params.net_dtype)
        score = -eps_w / sigma_x + neighborhood_score(x, mu, alpha_x, sigma_x, sigma_ce)

        x, x_mean = em_step(x, score, beta, dt, randn_like(i, x))
        if callback is not None:
            callback(i + 1, steps)
    return x_mean
