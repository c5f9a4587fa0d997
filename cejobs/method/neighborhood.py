"""Scores of the diffused CE neighbourhood densities (paper eqs. 4, 5, 7-12; docs/math.md).

Every function is elementwise in model space. With a = alpha_t, sg = sigma_t, s = sigma_ce and
y = x - a mu, each returns d/dx log p_t(x), where p_t is the neighbourhood density around mu
pushed through the forward process x_t = a x_0 + sg z. Inputs broadcast against x (alpha and
sigma are typically 0-d or (B, 1, 1, 1)); the result has the dtype of x (float32 or float64),
and all arithmetic is done in that dtype.

Notation shared by the Laplace ("Boltzmann-inspired", eq. 7) scores:
    k = sqrt2 / (a s)          the score's range is [-k, k]
    u = sg / (a s)             noise-to-neighbourhood ratio
    h = y / (sqrt2 sg)         so that p = u + h and q = u - h are eq. 9's erfc arguments
    K(z) = 1 / (sqrt(pi) erfcx(z)) - z,  i.e. sqrt(pi) erfcx(z) = 1 / (z + K(z)).
K > 0, K(z) ~ 1/(2z) for large z, and L(z) = log erfcx(z) has L'(z) = -2 K(z).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "NEIGHBORHOOD_SCORES",
    "boltzmann_exact_score",
    "boltzmann_gamma",
    "boltzmann_score",
    "gaussian_score",
]

_SQRT2 = math.sqrt(2.0)
_SQRT_PI = math.sqrt(math.pi)
_U_SWITCH = 20.0  # appendix 7: r(u) switches to a line at u = 20
_Z_CF = 3.0  # K by continued fraction from here on, and the exact score's far form
_SATURATE = 7.0  # |h| >= u + 7 gives |L(p) - L(q)| >= 49: tanh is +-1 to far below 1e-16

ScoreFn = Callable[[Tensor, Tensor, Tensor, Tensor, "float | Tensor"], Tensor]


def _is_double(dtype: torch.dtype) -> bool:
    return torch.finfo(dtype).eps < 1e-10


def _cf_terms(dtype: torch.dtype) -> int:
    # terms of K's continued fraction at z >= 3: relative error 1e-16 (32) or 1e-8 (12)
    return 32 if _is_double(dtype) else 12


def _series_h(dtype: torch.dtype) -> float:
    # |h| below which D uses its odd series to h^5; the first omitted term is
    # h^6 |K^(6)/K| / 5040 <= 5.4e-4 h^6, i.e. 3e-14 (double) or 3.5e-8 (single)
    return 0.02 if _is_double(dtype) else 0.2


def _sigma_floor(dtype: torch.dtype) -> float:
    # sigma_t = 0 (t = 0) is clamped to sqrt(tiny) ~ 1e-19 (single): the scores and their
    # slope at y = 0, about 1.13 / (a s sg), stay finite; no sigma_t of a real grid is this small
    return math.sqrt(torch.finfo(dtype).tiny)


def _as(v: float | Tensor, like: Tensor) -> Tensor:
    return torch.as_tensor(v, dtype=like.dtype, device=like.device)


def _k_func(z: Tensor) -> Tensor:
    """K(z) for z >= 0, to about 1e-15 (double) or 4e-6 (single, erfcx-limited) relative.

    Below _Z_CF directly from erfcx (the subtraction costs about log10(2 z^2) digits). Above it
    by the Laplace continued fraction of erfc, K(z) = (1/2)/(z + 1/(z + (3/2)/(z + 2/(z + ...)))),
    which has no cancellation.
    """
    near = torch.clamp(z, max=_Z_CF)  # the clamps keep the unused branch finite (torch.where)
    k_near = 1.0 / (_SQRT_PI * torch.special.erfcx(near)) - near
    far = torch.clamp(z, min=_Z_CF)
    k_far = torch.zeros_like(far)
    for n in range(_cf_terms(z.dtype), 0, -1):
        k_far = (0.5 * n) / (far + k_far)
    return torch.where(z < _Z_CF, k_near, k_far)


def _k_pair(p: Tensor, q: Tensor, h: Tensor) -> tuple[Tensor, Tensor]:
    """K(q) and K(p) - K(q) for p = u + h, q = u - h >= _Z_CF, both relatively accurate.

    Runs K's continued fraction for p and q together; with t_n = (n/2)/(z + t_{n+1}), the
    difference obeys D_n = -(n/2) (2h + D_{n+1}) / ((p + t_{n+1}(p)) (q + t_{n+1}(q))),
    so it never subtracts two nearly equal numbers.
    """
    t_p = torch.zeros_like(p)
    t_q = torch.zeros_like(q)
    diff = torch.zeros_like(h)
    for n in range(_cf_terms(p.dtype), 0, -1):
        den_p, den_q = p + t_p, q + t_q
        diff = (-0.5 * n) * (2.0 * h + diff) / (den_p * den_q)
        t_p, t_q = (0.5 * n) / den_p, (0.5 * n) / den_q
    return t_q, diff


def _log_erfcx(z: Tensor) -> Tensor:
    """L(z) = log erfcx(z) for z >= 0, and z^2 + log erfc(z) for z < 0 (no overflow)."""
    pos = torch.clamp(z, min=0.0)
    neg = torch.clamp(z, max=0.0)
    return torch.where(
        z >= 0,
        torch.log(torch.special.erfcx(pos)),
        neg * neg + torch.log(torch.special.erfc(neg)),
    )


def gaussian_score(
    x: Tensor, mu: Tensor, alpha: Tensor, sigma: Tensor, sigma_ce: float | Tensor
) -> Tensor:
    """Score of N(mu, s^2) diffused: (a mu - x) / (a^2 s^2 + sg^2) (eq. 4 as a score)."""
    mu, alpha, sigma, s = (_as(v, x) for v in (mu, alpha, sigma, sigma_ce))
    return (alpha * mu - x) / ((alpha * s) ** 2 + sigma**2)


def boltzmann_gamma(alpha: Tensor, sigma: Tensor, sigma_ce: float | Tensor) -> Tensor:
    """gamma_t of eqs. 6 and 11, with the appendix's linear switch of r(u) = 1/erfcx(u) at 20.

    The paper's gamma_t = k - sqrt2/(sg sqrt(pi)) r(u). Since k = (sqrt2/sg) u, this is
    gamma_t = -(sqrt2/sg) K(u) for u < 20, and for u >= 20, with r(u) = r(20) + sqrt(pi) (u - 20),
    gamma_t = -(sqrt2/sg) K(20): the switch freezes K at u = 20. Same value, without k
    cancelling against the r term; gamma_t < 0 and continuous at u = 20 by construction.
    The result has the promoted floating dtype of the tensor arguments.
    """
    tensors = [v for v in (alpha, sigma, sigma_ce) if isinstance(v, Tensor)]
    dtype = torch.get_default_dtype()
    for i, v in enumerate(tensors):
        dtype = v.dtype if i == 0 else torch.promote_types(dtype, v.dtype)
    like = torch.empty((), dtype=dtype, device=tensors[0].device if tensors else None)
    alpha, sigma, s = (_as(v, like) for v in (alpha, sigma, sigma_ce))
    sg = torch.clamp(sigma, min=_sigma_floor(dtype))
    u = sg / (alpha * s)
    return -(_SQRT2 / sg) * _k_func(torch.clamp(u, max=_U_SWITCH))


def boltzmann_score(
    x: Tensor, mu: Tensor, alpha: Tensor, sigma: Tensor, sigma_ce: float | Tensor
) -> Tensor:
    """The paper's hardtanh approximation (eqs. 5, 10): (sqrt2/(a s)) hardtanh(gamma_t y)."""
    mu, alpha, sigma, s = (_as(v, x) for v in (mu, alpha, sigma, sigma_ce))
    k = _SQRT2 / (alpha * s)
    return k * F.hardtanh(boltzmann_gamma(alpha, sigma, s) * (x - alpha * mu))


def boltzmann_exact_score(
    x: Tensor, mu: Tensor, alpha: Tensor, sigma: Tensor, sigma_ce: float | Tensor
) -> Tensor:
    """Exact score of the diffused Laplace density (eqs. 8-9): k (A - B) / (A + B).

    A = e^{ky} erfc(p), B = e^{-ky} erfc(q). As p^2 - q^2 = 2 k y, the exponentials cancel:
    score = k tanh(D / 2) with D = L(p) - L(q). D is formed in one of three ways, each
    relatively accurate in h (so float32 stays close to float64, even as y -> 0):
    - far, p, q >= 3 (high noise, u up to ~1e4 at t = 1, where L(p) - L(q) and u +- h would
      lose the digits of h): D = -log1p((2h + K(p) - K(q)) / (q + K(q))), from
      sqrt(pi) erfcx(z) = 1/(z + K(z)), with K(p) - K(q) from the paired continued fraction;
    - small |h| otherwise: the odd series D = -4h (K + h^2 K''/6 + h^4 K''''/120) at z = u,
      where K' = 2K(K + z) - 1 (from erfcx' = 2z erfcx - 2/sqrt(pi)) gives the derivatives;
    - else D = L(p) - L(q) directly, with no cancellation worth the name.
    """
    dtype = x.dtype
    mu, alpha, sigma, s = (_as(v, x) for v in (mu, alpha, sigma, sigma_ce))
    sg = torch.clamp(sigma, min=_sigma_floor(dtype))
    k = _SQRT2 / (alpha * s)
    u = sg / (alpha * s)
    h = (x - alpha * mu) / (_SQRT2 * sg)
    h = torch.minimum(torch.maximum(h, -(u + _SATURATE)), u + _SATURATE)

    # far form; masked lanes get the harmless point u = 2 _Z_CF, h = 0
    far = u - h.abs() >= _Z_CF
    u_f = torch.where(far, u, 2.0 * _Z_CF)
    h_f = torch.where(far, h, 0.0)
    k_q, k_diff = _k_pair(u_f + h_f, u_f - h_f, h_f)
    d_far = -torch.log1p((2.0 * h_f + k_diff) / (u_f - h_f + k_q))

    # odd series in h around z = u (only used for u < 3 + series_h, so K' is well conditioned)
    series = ~far & (h.abs() <= _series_h(dtype))
    h_s = torch.where(series, h, 0.0)
    u_s = torch.clamp(u, max=2.0 * _Z_CF)  # keeps the unused lanes' derivatives tame
    k0 = _k_func(u_s)
    k1 = 2.0 * k0 * (k0 + u_s) - 1.0
    k2 = k1 * (4.0 * k0 + 2.0 * u_s) + 2.0 * k0
    k3 = k2 * (4.0 * k0 + 2.0 * u_s) + 4.0 * k1 * (k1 + 1.0)
    k4 = k3 * (4.0 * k0 + 2.0 * u_s) + k2 * (12.0 * k1 + 6.0)
    h2 = h_s * h_s
    d_series = -4.0 * h_s * (k0 + h2 * (k2 / 6.0 + h2 * (k4 / 120.0)))

    d_near = _log_erfcx(u + h) - _log_erfcx(u - h)

    d = torch.where(far, d_far, torch.where(series, d_series, d_near))
    return k * torch.tanh(0.5 * d)


NEIGHBORHOOD_SCORES: dict[str, ScoreFn] = {
    "gaussian": gaussian_score,
    "boltzmann": boltzmann_score,
    "boltzmann-exact": boltzmann_exact_score,
}
