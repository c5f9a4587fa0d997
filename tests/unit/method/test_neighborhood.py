"""cejobs.method.neighborhood against arbitrary-precision (mpmath) and quadrature (scipy) references."""

from __future__ import annotations

import math

import mpmath
import numpy as np
import pytest
import torch
from scipy import integrate

from cejobs.method.neighborhood import (
    NEIGHBORHOOD_SCORES,
    boltzmann_exact_score,
    boltzmann_gamma,
    boltzmann_score,
    gaussian_score,
)
from cejobs.method.sde import VPSDE

F32, F64 = torch.float32, torch.float64
SDE = VPSDE()
DPS = 50  # mpmath digits: far more than the cancellation in A - B at |h| >= 1e-12


def _t64(v) -> torch.Tensor:
    return torch.as_tensor(np.asarray(v), dtype=F64)


def _cases(n: int, seed: int, min_h: float, zero_mu: bool) -> dict[str, np.ndarray]:
    """Random (t, mu, sigma_ce, x) with t near 0 and 1, and |y| from min_h (u + 1) into the tails.

    h = y / (sqrt2 sigma_t) is drawn log-uniform in [min_h, 20] (u + 1): beyond u + 7 the score
    is saturated at +-k. With zero_mu, y = x exactly, so tiny |y| is a fair test.
    """
    rng = np.random.default_rng(seed)
    m = n // 3
    t = np.concatenate(
        [rng.uniform(1e-3, 1.0, m), rng.uniform(1e-3, 1.1e-2, m), rng.uniform(0.99, 1.0, n - 2 * m)]
    )
    a = SDE.alpha(_t64(t)).numpy()
    sg = SDE.sigma(_t64(t)).numpy()
    s = np.exp(rng.uniform(math.log(0.05), 0.0, n))
    mu = np.zeros(n) if zero_mu else rng.uniform(-1.0, 1.0, n)
    u = sg / (a * s)
    h = rng.choice([-1.0, 1.0], n) * (u + 1) * 10 ** rng.uniform(math.log10(min_h), 1.3, n)
    x = a * mu + math.sqrt(2) * sg * h
    return dict(t=t, a=a, sg=sg, s=s, mu=mu, x=x, u=u, h=h)


def _mp_laplace(x, mu, a, sg, s) -> mpmath.mpf:
    """Eq. 9 as printed: k (A - B) / (A + B), A = e^{ky} erfc(p), B = e^{-ky} erfc(q)."""
    x, mu, a, sg, s = map(mpmath.mpf, (x, mu, a, sg, s))
    k, u, y = mpmath.sqrt(2) / (a * s), sg / (a * s), x - a * mu
    p, q = u + y / (mpmath.sqrt(2) * sg), u - y / (mpmath.sqrt(2) * sg)
    big_a, big_b = mpmath.exp(k * y) * mpmath.erfc(p), mpmath.exp(-k * y) * mpmath.erfc(q)
    return k * (big_a - big_b) / (big_a + big_b)


def _mp_gauss(x, mu, a, sg, s) -> mpmath.mpf:
    x, mu, a, sg, s = map(mpmath.mpf, (x, mu, a, sg, s))
    return (a * mu - x) / (a**2 * s**2 + sg**2)


def _mp_k(u) -> mpmath.mpf:
    u = mpmath.mpf(u)
    return 1 / (mpmath.sqrt(mpmath.pi) * mpmath.exp(u * u) * mpmath.erfc(u)) - u


def _mp_gamma_paper(a, sg, s) -> mpmath.mpf:
    """Eqs. 6 and 11 as printed, r(u) = (e^{u^2} erfc(u))^{-1}, linear for u >= 20 (appendix 7)."""
    a, sg, s = map(mpmath.mpf, (a, sg, s))
    u = sg / (a * s)

    def r(v):
        return 1 / (mpmath.exp(v * v) * mpmath.erfc(v))

    r_u = r(u) if u < 20 else r(mpmath.mpf(20)) + mpmath.sqrt(mpmath.pi) * (u - 20)
    return mpmath.sqrt(2) / (a * s) - mpmath.sqrt(2) / (sg * mpmath.sqrt(mpmath.pi)) * r_u


def _rel_err(out: torch.Tensor, ref: np.ndarray) -> np.ndarray:
    return np.abs(out.numpy() - ref) / np.abs(ref)


@pytest.mark.parametrize(
    ("fn", "ref_fn"),
    [(gaussian_score, _mp_gauss), (boltzmann_exact_score, _mp_laplace)],
    ids=["gaussian", "boltzmann-exact"],
)
def test_closed_forms_match_mpmath(fn, ref_fn):
    # y = x - a mu is rounded in float64, so with mu != 0 tiny |y| only measures that rounding;
    # |y| down to 1e-12 (u + 1) sqrt2 sigma_t is tested with mu = 0, where y = x exactly
    for seed, min_h, zero_mu in [(0, 1e-4, False), (1, 1e-12, True)]:
        c = _cases(600, seed, min_h, zero_mu)
        with mpmath.workdps(DPS):
            ref = np.array(
                [float(ref_fn(*v)) for v in zip(c["x"], c["mu"], c["a"], c["sg"], c["s"])]
            )
        out = fn(_t64(c["x"]), _t64(c["mu"]), _t64(c["a"]), _t64(c["sg"]), _t64(c["s"]))
        assert out.dtype == F64
        err = _rel_err(out, ref)
        assert err.max() <= 1e-8, (err.max(), c["u"][err.argmax()], c["h"][err.argmax()])


def _quad_score(x, mu, a, sg, s, laplace: bool) -> float:
    """Score of p_t(x) = int b(v) N(x; a v, sg^2) dv by quad, then a 4-point central difference.

    v is the clean neighbourhood variable, b = Laplace(mu, s) (eq. 7) or N(mu, s^2). The
    integrand is negligible outside both |v - mu| < 40 s and |v - x/a| < 40 sg/a (e^-56 for
    the Laplace factor), so quad runs on their intersection with breaks at the kink mu and the
    Gaussian peak x/a; on the union it can step over a narrow peak and return half the mass.
    """

    def density(xx: float) -> float:
        if laplace:

            def b(v):
                return math.exp(-math.sqrt(2) * abs(v - mu) / s) / (math.sqrt(2) * s)

        else:

            def b(v):
                return math.exp(-0.5 * ((v - mu) / s) ** 2) / (math.sqrt(2 * math.pi) * s)

        def f(v):
            return b(v) * math.exp(-0.5 * ((xx - a * v) / sg) ** 2) / (math.sqrt(2 * math.pi) * sg)

        lo = max(mu - 40 * s, xx / a - 40 * sg / a)
        hi = min(mu + 40 * s, xx / a + 40 * sg / a)
        brk = [v for v in sorted({mu, xx / a}) if lo < v < hi]
        val, _ = integrate.quad(f, lo, hi, points=brk or None, epsabs=0, epsrel=1e-13, limit=200)
        return val

    d = 1e-2 * sg
    lp = {j: math.log(density(x + j * d)) for j in (-2, -1, 1, 2)}
    return (8 * (lp[1] - lp[-1]) - (lp[2] - lp[-2])) / (12 * d)


@pytest.mark.parametrize("laplace", [True, False], ids=["boltzmann-exact", "gaussian"])
def test_scores_match_quadrature_of_the_diffused_density(laplace):
    # Tolerance 1e-7 relative: the stencil's truncation is about (d / sigma_t)^4 / 30 ~ 3e-10
    # (the score varies on the scale sigma_t or more), and quad's 1e-13 relative error in p_t
    # becomes ~1e-13 / d in the difference of logs; |y| >= 0.1 w keeps the score away from 0.
    # With the intersection window quad converges over the whole range, high noise included.
    rng = np.random.default_rng(2)
    fn = boltzmann_exact_score if laplace else gaussian_score
    worst = 0.0
    for _ in range(30):
        t, s, mu = rng.uniform(1e-2, 1.0), rng.uniform(0.05, 1.0), rng.uniform(-1.0, 1.0)
        a, sg = SDE.alpha(_t64(t)).item(), SDE.sigma(_t64(t)).item()
        w = math.hypot(a * s, sg)
        x = a * mu + rng.choice([-1.0, 1.0]) * rng.uniform(0.1, 3.0) * w
        ref = _quad_score(x, mu, a, sg, s, laplace)
        out = fn(_t64(x), _t64(mu), _t64(a), _t64(sg), s).item()
        worst = max(worst, abs(out - ref) / abs(ref))
    assert worst <= 1e-7


def test_float32_close_to_float64():
    # The float64 reference sees the same float32-rounded inputs.
    # (1) mu = 0, so y = x is exact in both: only the algorithm differs. Every form of D is
    #     relatively accurate in h, so the bound is float32 erfcx's own error (4.4e-7 on CPU)
    #     times the K(z) = 1/(sqrt(pi) erfcx) - z subtraction (<= ~10 at z < 3): 1e-5.
    c = _cases(1500, 3, 1e-12, zero_mu=True)
    ins32 = [torch.as_tensor(c[k], dtype=F32) for k in ("x", "mu", "a", "sg", "s")]
    tols = {"gaussian": 1e-6, "boltzmann": 1e-5, "boltzmann-exact": 1e-5}
    for name, fn in NEIGHBORHOOD_SCORES.items():
        out32 = fn(*ins32)
        assert out32.dtype == F32 and torch.isfinite(out32).all()
        out64 = fn(*(v.double() for v in ins32))
        rel = ((out32.double() - out64).abs() / out64.abs()).max().item()
        assert rel <= tols[name], (name, rel)

    # (2) mu != 0: float32 rounds y = x - a mu itself, by up to eps (|x| + |a mu|), so compare
    #     with first-order propagation of that rounding (backward error), plus eps * sigma_t
    #     for the near form's absolute error: |d| <= 8 eps (|s| + |ds/dy| (|x| + |a mu| + sg)).
    c = _cases(1500, 4, 1e-8, zero_mu=False)
    ins32 = [torch.as_tensor(c[k], dtype=F32) for k in ("x", "mu", "a", "sg", "s")]
    x64 = ins32[0].double().requires_grad_()
    mu64, a64, sg64, s64 = (v.double() for v in ins32[1:])
    out64 = boltzmann_exact_score(x64, mu64, a64, sg64, s64)
    (slope,) = torch.autograd.grad(out64.sum(), x64)
    out32 = boltzmann_exact_score(*ins32).double()
    scale = out64.detach().abs() + slope.abs() * (x64.detach().abs() + (a64 * mu64).abs() + sg64)
    assert ((out32 - out64.detach()).abs() <= 8 * torch.finfo(F32).eps * scale).all()


@pytest.mark.parametrize("dtype", [F32, F64])
def test_finite_everywhere_with_gradients(dtype):
    # t = 0 (sigma = 0), t = 1 (alpha = 0.0066), and alphas far below the VP schedule's
    t = torch.tensor([0.0, 1e-6, 1e-3, 0.01, 0.1, 0.5, 0.9, 0.999, 1.0], dtype=dtype)
    a = torch.cat([SDE.alpha(t), torch.tensor([1e-4, 1e-6], dtype=dtype)])
    sg = torch.cat([SDE.sigma(t), torch.ones(2, dtype=dtype)])
    mags = [0.0, 1e-30, 1e-10, 1e-4, 0.01, 0.1, 0.5, 1.0, 3.0, 10.0, 100.0, 1e4, 1e10, 1e30]
    x = torch.tensor(mags + [-v for v in mags[1:]], dtype=dtype)[:, None].expand(-1, len(a))
    for s in (0.05, 0.2, 1.0):
        for mu in (0.0, 0.7, -1.0):
            for name, fn in NEIGHBORHOOD_SCORES.items():
                xg, ag, sgg = (v.clone().requires_grad_() for v in (x, a, sg))
                mug = torch.tensor(mu, dtype=dtype, requires_grad=True)
                out = fn(xg, mug, ag, sgg, s)
                assert out.dtype == dtype and torch.isfinite(out).all(), (name, s, mu)
                grads = torch.autograd.grad(out.sum(), (xg, mug, ag, sgg))
                assert all(torch.isfinite(g).all() for g in grads), (name, s, mu)
                k = math.sqrt(2) / (a * s)
                assert (out.abs() <= k * (1 + 1e-6)).all() or name == "gaussian"


def test_result_keeps_the_dtype_of_x():
    x = torch.linspace(-2, 2, 9, dtype=F32).reshape(1, 1, 3, 3).expand(2, 1, 3, 3)
    a = SDE.alpha(torch.tensor([0.3, 0.9], dtype=F64)).reshape(2, 1, 1, 1)
    sg = SDE.sigma(torch.tensor([0.3, 0.9], dtype=F64)).reshape(2, 1, 1, 1)
    for fn in NEIGHBORHOOD_SCORES.values():
        out = fn(x, torch.zeros(3, 3, dtype=F64), a, sg, 0.2)
        assert out.dtype == F32 and out.shape == (2, 1, 3, 3)
        assert torch.allclose(out.double(), fn(x.double(), 0.0, a, sg, 0.2), rtol=1e-5, atol=0)
    assert set(NEIGHBORHOOD_SCORES) == {"gaussian", "boltzmann", "boltzmann-exact"}


def test_exact_score_is_odd_and_zero_at_the_mode():
    a, sg = SDE.alpha(_t64([0.05, 0.4, 1.0])), SDE.sigma(_t64([0.05, 0.4, 1.0]))
    y = torch.logspace(-12, 3, 61, dtype=F64)[:, None]
    for dtype, rtol in ((F32, 1e-6), (F64, 1e-14)):
        yy, aa, ss = y.to(dtype), a.to(dtype), sg.to(dtype)
        plus = boltzmann_exact_score(yy, 0.0, aa, ss, 0.2)
        minus = boltzmann_exact_score(-yy, 0.0, aa, ss, 0.2)
        assert torch.allclose(minus, -plus, rtol=rtol, atol=0)
        assert (plus < 0).all()
        assert (boltzmann_exact_score(torch.zeros_like(yy), 0.0, aa, ss, 0.2) == 0).all()


def _switch_cases(n: int, seed: int) -> dict[str, np.ndarray]:
    """(t, sigma_ce) with u log-uniform in [1e-2, 1e4], so both sides of the u = 20 switch."""
    rng = np.random.default_rng(seed)
    t = rng.uniform(1e-3, 1.0, n)
    a, sg = SDE.alpha(_t64(t)).numpy(), SDE.sigma(_t64(t)).numpy()
    u = 10 ** rng.uniform(-2, 4, n)
    return dict(a=a, sg=sg, s=sg / (a * u), u=u)


def test_boltzmann_matches_the_paper_formula():
    c = _switch_cases(400, 5)
    a, sg, s = _t64(c["a"]), _t64(c["sg"]), _t64(c["s"])
    gamma = boltzmann_gamma(a, sg, s)
    assert (gamma < 0).all()
    with mpmath.workdps(DPS):
        ref = np.array([float(_mp_gamma_paper(*v)) for v in zip(c["a"], c["sg"], c["s"])])
    assert _rel_err(gamma, ref).max() <= 1e-10

    # the score is k hardtanh(gamma y) (eq. 10), over y across the hardtanh corners
    y = _t64(np.random.default_rng(6).uniform(-3, 3, 400)) / gamma.abs()
    k = math.sqrt(2) / (a * s)
    expect = k * torch.clamp(_t64(ref) * y, -1, 1)
    got = boltzmann_score(y + 0.3 * a, _t64(0.3), a, sg, s)
    assert torch.allclose(got, expect, rtol=1e-9, atol=0)


def test_boltzmann_slope_at_mode():
    # Below the switch k gamma is the exact score's slope at y = 0 (eq. 12 at y = 0), so the
    # slopes at y = 0 agree; above it the slope is k sqrt2 K(20)/sg instead of k sqrt2 K(u)/sg,
    # too large by K(20)/K(u) = (u/20) (1 - 1/400 + 1/u^2 + ...), as K(z) = (1 - 1/z^2 + ...)/(2z).
    c = _switch_cases(40, 7)
    for a, sg, s, u in zip(c["a"], c["sg"], c["s"], c["u"]):
        x0 = torch.zeros((), dtype=F64, requires_grad=True)
        (slope_b,) = torch.autograd.grad(boltzmann_score(x0, 0.0, _t64(a), _t64(sg), s), x0)
        with mpmath.workdps(DPS):
            slope_exact = mpmath.diff(lambda yy: _mp_laplace(yy, 0, a, sg, s), 0)
            expected_ratio = 1 if u < 20 else _mp_k(20) / _mp_k(u)
        ratio = slope_b.item() / float(slope_exact)
        assert abs(ratio / float(expected_ratio) - 1) <= 1e-9, (u, ratio)
        if u >= 20:
            assert 0.997 <= ratio * 20 / u <= 1.0 + 1e-9


def test_boltzmann_continuous_at_switch():
    a, sg = SDE.alpha(_t64(0.6)), SDE.sigma(_t64(0.6))
    sides = []
    for u in (20 * (1 - 1e-12), 20.0, 20 * (1 + 1e-12)):
        s = sg / (a * u)
        y = torch.linspace(-50, 50, 101, dtype=F64)
        sides.append((boltzmann_gamma(a, sg, s), boltzmann_score(y, 0.0, a, sg, s)))
    for gamma, score in sides[::2]:
        assert abs(gamma / sides[1][0] - 1) <= 1e-11
        assert torch.allclose(score, sides[1][1], rtol=1e-11, atol=0)
