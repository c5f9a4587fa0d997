"""A conditional and an unconditional eps-network as one network with a null label.

Networks trained without label dropout have no null label; classifier-free guidance (paper
eq. 3) then takes eps(x, t, null) from a separately trained unconditional network. The
sampler (`method/sampler.guided_eps`) calls the two members directly, one batch each, and
combines them as it combines the conditional and null-label halves of one network. Called as
a network, eps(x, t, y) is the unconditional member's output where y is the null label and
the conditional member's elsewhere.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class EpsPair(nn.Module):
    def __init__(self, cond: nn.Module, uncond: nn.Module, num_classes: int,
                 image_shape: tuple[int, ...]):
        super().__init__()
        self.cond, self.uncond = cond, uncond
        self.num_classes = int(num_classes)  # also the null label
        self.image_shape = tuple(image_shape)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        null = y == self.num_classes
        eps_cond = self.cond(x, t, y.clamp(max=self.num_classes - 1))
        eps_uncond = self.uncond(x, t, y)
        return torch.where(null.view(-1, *[1] * (x.dim() - 1)), eps_uncond, eps_cond)
