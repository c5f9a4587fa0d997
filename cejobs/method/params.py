"""The method's parameters, each default written once (paper eqs. 3-5, sec. 4; docs/math.md).

`SamplerParams` is what the augmented-score sampler (`sampler.sample_ce`) and its fast path
(`fastpath.FastSampler`) need beyond the network and the noise; `RobustParams` is what the
robust-classifier baseline (`robust.robust_ce`) needs. The run configuration's fields take their
defaults from these classes (`SamplerParams.w`, ...), so a default is changed here only.

This module does not import torch when it is imported: light processes (the CLIs' argument
parsing, the drivers' planning) read the defaults without loading it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

    from cejobs.method.neighborhood import ScoreFn

# --precision: the network's dtype, by torch attribute name (the SDE state and scores stay fp32)
NET_PRECISIONS = {"fp32": "float32", "bf16": "bfloat16"}
DEFAULT_PRECISION = "fp32"


def net_dtype_of(precision: str) -> torch.dtype:
    """The torch dtype of a `--precision` name ("fp32", "bf16")."""
    import torch

    return getattr(torch, NET_PRECISIONS[precision])


def _default_net_dtype() -> torch.dtype:
    return net_dtype_of(DEFAULT_PRECISION)


@dataclass(frozen=True)
class SamplerParams:
    """Euler-Maruyama on the reverse VP SDE with the score s_w + s_N (eqs. 3-5)."""

    method: str = "boltzmann"  # the neighbourhood score s_N: a key of NEIGHBORHOOD_SCORES
    w: float = 15.0  # classifier-free guidance weight (eq. 3)
    sigma_ce: float = 0.2  # neighbourhood scale, in model space [-1, 1] (eqs. 4, 5)
    steps: int = 1000  # Euler-Maruyama steps N; the step is dt = -1/N
    eps: float = 1e-3  # t_min: the time grid runs from 1 down to eps (score_sde)
    # the network's dtype; the SDE state and both scores stay in the state's dtype (made on
    # first use, so that importing this module does not import torch)
    net_dtype: torch.dtype = field(default_factory=_default_net_dtype)

    @property
    def score_fn(self) -> ScoreFn:
        """The neighbourhood score function s_N named by `method` (neighborhood.py)."""
        from cejobs.method.neighborhood import NEIGHBORHOOD_SCORES

        return NEIGHBORHOOD_SCORES[self.method]


@dataclass(frozen=True)
class RobustParams:
    """Normalised L2 gradient ascent on log p_target with a robust classifier (sec. 4)."""

    step_size: float = 0.05  # L2 length of every gradient step
    max_steps: int = 200  # cap on steps per example
    threshold: float = 0.9  # stop once p_target reaches this
