"""Counter-based Gaussian noise: the noise of a CE depends only on (seed, source, target, replicate).

Philox4x32-10 (Salmon et al. 2011, as in cuRAND and JAX) is a bijection of a 128-bit counter under
a 64-bit key. We key it by the run's seed and address every number by the counter

    (element block, step, source index, target << 16 | replicate)

so that a CE's noise is the same whatever the batch size, batch order, worker count or backend,
and one vectorised call makes the noise of a whole batch for many steps at once.
Each counter yields 4 uint32 words, turned into 4 normals by Box-Muller.

uint32 arithmetic is done in int64 tensors holding values in [0, 2^32); 32x32-bit products are
split into 16-bit halves so nothing overflows int64.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

_MASK32 = 0xFFFFFFFF
_PHILOX_M0, _PHILOX_M1 = 0xD2511F53, 0xCD9E8D57  # round multipliers
_PHILOX_W0, _PHILOX_W1 = 0x9E3779B9, 0xBB67AE85  # Weyl key increments
_ROUNDS = 10
_REPLICATE_BITS = 16

INIT_STEP = 0  # counter word 1 for the starting latent; step i of the sampler uses i + 1


def _mulhilo(a: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(hi, lo) 32-bit words of the 64-bit product a * m, for a in [0, 2^32) and m < 2^32."""
    p_lo = (a & 0xFFFF) * m  # < 2^48
    p_hi = (a >> 16) * m  # < 2^48
    lo = (p_lo + ((p_hi & 0xFFFF) << 16)) & _MASK32
    hi = (p_hi + (p_lo >> 16)) >> 16
    return hi, lo


def philox4x32(counter: tuple[Tensor, Tensor, Tensor, Tensor], key: tuple[int, int]):
    """Philox4x32-10 of broadcastable int64 counter words in [0, 2^32); returns 4 words."""
    c0, c1, c2, c3 = counter
    k0, k1 = key[0] & _MASK32, key[1] & _MASK32
    for r in range(_ROUNDS):
        if r:
            k0, k1 = (k0 + _PHILOX_W0) & _MASK32, (k1 + _PHILOX_W1) & _MASK32
        hi0, lo0 = _mulhilo(c0, _PHILOX_M0)
        hi1, lo1 = _mulhilo(c2, _PHILOX_M1)
        c0, c1, c2, c3 = hi1 ^ c1 ^ k0, lo1, hi0 ^ c3 ^ k1, lo0
    return c0, c1, c2, c3


def _uniform(word: Tensor) -> Tensor:
    """uint32 word -> float64 uniform in the open interval (0, 1)."""
    return (word.to(torch.float64) + 0.5) * (1.0 / 2**32)


def _box_muller(w0: Tensor, w1: Tensor) -> tuple[Tensor, Tensor]:
    radius = torch.sqrt(-2.0 * torch.log(_uniform(w0)))
    angle = (2.0 * math.pi) * _uniform(w1)
    return radius * torch.cos(angle), radius * torch.sin(angle)


def ce_normals(
    seed: int,
    source_index: Tensor,
    target: Tensor,
    replicate: Tensor,
    steps: Tensor,
    numel: int,
    device: torch.device | str = "cpu",
) -> Tensor:
    """Standard normals of shape (len(steps), B, numel) for B CEs, in float32.

    `source_index`, `target`, `replicate` are (B,) integer tensors identifying each CE;
    `steps` holds the counter step words (INIT_STEP for the latent, i + 1 for sampler step i).
    """
    device = torch.device(device)
    blocks = (numel + 3) // 4
    i64 = dict(dtype=torch.int64, device=device)
    c0 = torch.arange(blocks, **i64).view(1, 1, blocks)
    c1 = steps.to(**i64).view(-1, 1, 1)
    c2 = source_index.to(**i64).view(1, -1, 1) & _MASK32
    ce_word = (target.to(**i64) << _REPLICATE_BITS) | replicate.to(**i64)
    c3 = ce_word.view(1, -1, 1) & _MASK32
    shape = (c1.shape[0], c2.shape[1], blocks)
    counter = tuple(c.expand(shape) for c in (c0, c1, c2, c3))
    w = philox4x32(counter, (seed & _MASK32, (seed >> 32) & _MASK32))
    z0, z1 = _box_muller(w[0], w[1])
    z2, z3 = _box_muller(w[2], w[3])
    z = torch.stack((z0, z1, z2, z3), dim=-1).reshape(shape[0], shape[1], blocks * 4)
    return z[..., :numel].to(torch.float32)


class CENoise:
    """A `randn_like(step, x)` noise hook for the sampler, per CE (see module docstring).

    `step` is the sampler's step index i (0-based); the starting latent is `latents(shape)`.
    Noise is made `chunk` steps at a time, to amortise kernel launches.
    """

    def __init__(
        self,
        seed: int,  # the run's seed: the Philox key
        source_index: Tensor,  # (B,) dataset index of each CE's source
        target: Tensor,  # (B,) class each CE is guided to
        replicate: Tensor,  # (B,) 0..per_class-1
        chunk: int = 16,  # steps of noise made per call
    ):
        if not (0 <= seed < 2**64):
            raise ValueError(f"seed must be in [0, 2^64), got {seed}")
        if int(replicate.max()) >= 2**_REPLICATE_BITS or int(target.min()) < 0:
            raise ValueError("replicate must be < 65536 and target >= 0")
        self.seed, self.chunk = seed, chunk
        self.source_index, self.target, self.replicate = source_index, target, replicate
        self._cache_start, self._cache = -1, None

    def _normals(self, steps: Tensor, like: Tensor) -> Tensor:
        b = like.shape[0]
        z = ce_normals(
            self.seed, self.source_index, self.target, self.replicate, steps,
            like[0].numel(), device=like.device,
        )
        return z.view(len(steps), b, *like.shape[1:]).to(like.dtype)

    def latents(self, like: Tensor) -> Tensor:
        """Starting point x_T ~ N(0, I) of each CE, shaped like `like`."""
        return self._normals(torch.tensor([INIT_STEP]), like)[0]

    def __call__(self, step: int, like: Tensor) -> Tensor:
        start = step - step % self.chunk
        if self._cache is None or start != self._cache_start or self._cache.shape[1:] != like.shape:
            words = torch.arange(start, start + self.chunk) + 1
            self._cache, self._cache_start = self._normals(words, like), start
        return self._cache[step - start]
