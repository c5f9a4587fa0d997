"""The VP SDE of Song et al. (2021), with score_sde's constants (docs/math.md, "VP SDE")."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass(frozen=True)
class VPSDE:
    beta_min: float = 0.1  # beta(0)
    beta_max: float = 20.0  # beta(1)

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def log_alpha(self, t: Tensor) -> Tensor:
        # log alpha_t = -t^2 (beta_max - beta_min)/4 - t beta_min/2
        return -0.25 * t**2 * (self.beta_max - self.beta_min) - 0.5 * t * self.beta_min

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(self.log_alpha(t))

    def sigma(self, t: Tensor) -> Tensor:
        # sigma_t = sqrt(1 - alpha_t^2), via expm1 so that it stays accurate as t -> 0
        return torch.sqrt(-torch.expm1(2.0 * self.log_alpha(t)))


def time_grid(steps: int, eps: float = 1e-3, dtype: torch.dtype = torch.float64) -> Tensor:
    """score_sde's sampling grid t_i = linspace(1, eps, N). The step itself is dt = -1/N."""
    return torch.linspace(1.0, eps, steps, dtype=dtype)
