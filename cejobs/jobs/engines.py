"""The engines that make one batch of a method's CEs (`Method.load` returns one).

Each takes sources as images in [0, 1] and the CEs' identities (source index, target,
replicate: what keys their noise, noise.py) and returns the CEs as images in [0, 1] on the
CPU, with the method's extra per-CE arrays.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor, nn

from cejobs.method.fastpath import FastSampler
from cejobs.method.noise import CENoise
from cejobs.method.params import RobustParams, SamplerParams
from cejobs.method.robust import robust_ce
from cejobs.method.sampler import sample_ce, to_image_space, to_model_space

Extras = dict[str, Tensor]  # store array name -> (B,) values, one per CE


class Engine(Protocol):
    @property
    def mode(self) -> str:
        """How it runs: "eager", "compiled", "compiled+cudagraphs", "eager (compile failed)"."""

    @property
    def compile_seconds(self) -> float | None:
        """Seconds its first call spent compiling, when it compiled."""

    def make(self, mu: Tensor, src: Tensor, target: Tensor,
             replicate: Tensor) -> tuple[Tensor, Extras]:
        """CEs (B, C, H, W) of sources `mu` (images in [0, 1]) towards `target`, and extras."""


class SamplerEngine:
    """`sampler.sample_ce` on the network (eager or torch.compile'd), noise keyed per CE
    (paper eqs. 3-5)."""

    compile_seconds = None

    def __init__(self, net: nn.Module, params: SamplerParams, seed: int,
                 device: torch.device, centered: bool, mode: str):
        self.net, self.params, self.seed = net, params, seed
        self.device, self.centered, self.mode = device, centered, mode

    def make(self, mu, src, target, replicate):
        m_mu = to_model_space(mu, self.centered).to(self.device)
        noise = CENoise(self.seed, src, target, replicate)
        m = sample_ce(self.net, noise.latents(m_mu), m_mu, target.to(self.device), self.params,
                      randn_like=noise)
        return to_image_space(m, self.centered).cpu(), {}


class FastEngine:
    """The fast sampling path (fastpath.py): the same CEs from the same noise."""

    def __init__(self, sampler: FastSampler, centered: bool):
        self.sampler, self.centered = sampler, centered

    @property
    def mode(self) -> str:
        return self.sampler.mode

    @property
    def compile_seconds(self) -> float | None:
        return self.sampler.compile_seconds

    def make(self, mu, src, target, replicate):
        m_mu = to_model_space(mu, self.centered).to(self.sampler.device)
        m = self.sampler.sample(m_mu, target, src, replicate)
        return to_image_space(m, self.centered).cpu(), {}


class RobustEngine:
    """Normalised L2 gradient ascent on log p_target (paper sec. 4); no noise."""

    mode = "eager"
    compile_seconds = None

    def __init__(self, net: nn.Module, params: RobustParams, device: torch.device):
        self.net, self.params, self.device = net, params, device

    def make(self, mu, src, target, replicate):
        p = self.params
        r = robust_ce(self.net, mu.to(self.device), target.to(self.device),
                      step_size=p.step_size, max_steps=p.max_steps, threshold=p.threshold)
        return r.x.cpu(), {"ce/robust_steps": r.steps.cpu(), "ce/robust_reached": r.reached.cpu()}
