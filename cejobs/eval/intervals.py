"""Bootstrap confidence intervals over sources (docs/evaluation.md, "Intervals").

The unit of resampling is the source: a resample draws n sources with replacement and keeps
all CEs of each drawn source together (a cluster bootstrap), because the CEs of one source
share its image and are not independent. The draws are a function of (n, seed, n_resamples)
alone, so two stores with the same sources resampled by one `Bootstrap` are resampled
*jointly* (paired: docs/evaluation.md, "Paired comparisons").

Every statistic here is written with per-source weights w (B, n), the number of times each
source is drawn, so that w = 1 gives the point estimate itself. Intervals are percentile
intervals (the level/2 and 1 - level/2 quantiles of the replicates, np.quantile "linear");
replicates where the statistic is undefined (a zero denominator) are left out.
"""

from __future__ import annotations

import numpy as np

N_RESAMPLES = 2000
LEVEL = 0.95
SEED = 0
_CHUNK = 100  # resamples per block of the gathered quantiles


def _plain(x) -> float | None:
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


class Bootstrap:
    """n sources resampled `n_resamples` times from np.random.default_rng([seed, n, stream]);
    `stream` tells apart the independent resamples of two unpaired stores of one size."""

    def __init__(self, n: int, n_resamples: int = N_RESAMPLES, seed: int = SEED,
                 level: float = LEVEL, stream: int = 0):
        if not 0 < level < 1 or n_resamples < 1:
            raise ValueError(f"level {level} must be in (0, 1) and n_resamples {n_resamples} >= 1")
        self.n, self.n_resamples, self.seed, self.level = int(n), int(n_resamples), seed, level
        rng = np.random.default_rng([seed, self.n, stream])
        self.idx = rng.integers(0, max(self.n, 1), size=(self.n_resamples, self.n))
        self.w = np.zeros((self.n_resamples, self.n))
        np.add.at(self.w, (np.arange(self.n_resamples)[:, None], self.idx), 1.0)

    def settings(self) -> dict:
        return {"method": "percentile", "unit": "source", "level": self.level,
                "n_resamples": self.n_resamples, "seed": self.seed}

    def interval(self, value, replicates) -> dict:
        """{"value", "low", "high"}: the point estimate and the percentile interval of the
        finite replicates (all None when the value is undefined)."""
        value = _plain(value)
        reps = np.asarray(replicates, dtype=np.float64).ravel()
        reps = reps[np.isfinite(reps)]
        if value is None or reps.size == 0:
            return {"value": value, "low": None, "high": None}
        a = (1 - self.level) / 2
        low, high = np.quantile(reps, [a, 1 - a])
        return {"value": value, "low": float(low), "high": float(high)}

    # ------------------------------------------------------------ replicates, shape (B,)
    def ratio(self, num, den) -> np.ndarray:
        """sum_i w_i num_i / sum_i w_i den_i (e.g. hits and counts per source); NaN on 0/0."""
        top = self.w @ np.asarray(num, dtype=np.float64)
        bottom = self.w @ np.asarray(den, dtype=np.float64)
        with np.errstate(invalid="ignore", divide="ignore"):
            return np.where(bottom > 0, top / np.where(bottom > 0, bottom, 1), np.nan)

    def fit(self, x, y, keep=None) -> dict[str, np.ndarray]:
        """Weighted least squares of y on x per resample, over the sources in `keep` (bool (n,),
        default all; x and y hold only those): slope, intercept, r2 (NaN where undefined, as
        metrics.linear_fit). x and y are centred first for accuracy."""
        x = np.asarray(x, dtype=np.float64)
        y = np.asarray(y, dtype=np.float64)
        w = self.w if keep is None else self.w[:, np.asarray(keep, dtype=bool)]
        if x.size == 0:
            nan = np.full(self.n_resamples, np.nan)
            return {"slope": nan, "intercept": nan, "r2": nan}
        x0, y0 = x.mean(), y.mean()
        x, y = x - x0, y - y0
        sw = w.sum(axis=1)
        with np.errstate(invalid="ignore", divide="ignore"):
            mx, my = (w @ x) / sw, (w @ y) / sw
        sxx = w @ (x * x) - sw * mx * mx
        syy = w @ (y * y) - sw * my * my
        sxy = w @ (x * y) - sw * mx * my
        tiny = 1e-12 * max(float(x @ x), 1e-300)
        with np.errstate(invalid="ignore", divide="ignore"):
            slope = np.where(sxx > tiny, sxy / sxx, np.nan)
            r2 = np.where((sxx > tiny) & (syy > 1e-12 * max(float(y @ y), 1e-300)),
                          np.minimum(1.0, sxy * sxy / (sxx * syy)), np.nan)
        return {"slope": slope, "intercept": (my + y0) - slope * (mx + x0), "r2": r2}

    def quantiles(self, values, qs) -> tuple[np.ndarray, np.ndarray]:
        """values (n, m) per source, NaN where a CE does not count: per resample, the mean and
        the quantiles qs (np.quantile "linear") of the counted values of the drawn sources.
        Returns (mean (B,), quantiles (B, len(qs)))."""
        v = np.asarray(values, dtype=np.float64).reshape(self.n, -1)
        qs = np.asarray(qs, dtype=np.float64)
        means = np.full(self.n_resamples, np.nan)
        out = np.full((self.n_resamples, qs.size), np.nan)
        if self.n == 0 or v.shape[1] == 0:
            return means, out
        for s in range(0, self.n_resamples, _CHUNK):
            idx = self.idx[s:s + _CHUNK]
            g = np.sort(v[idx].reshape(len(idx), -1), axis=1)  # NaN sorts last
            m = np.isfinite(g).sum(axis=1)
            ok = m > 0
            with np.errstate(invalid="ignore"):
                means[s:s + len(g)] = np.where(ok, np.nansum(g, axis=1) / np.maximum(m, 1), np.nan)
            h = (np.maximum(m, 1) - 1)[:, None] * qs  # virtual index (n - 1) q
            lo = np.floor(h).astype(np.int64)
            hi = np.minimum(lo + 1, np.maximum(m, 1)[:, None] - 1)
            a, b = np.take_along_axis(g, lo, 1), np.take_along_axis(g, hi, 1)
            out[s:s + len(g)] = np.where(ok[:, None], a + (h - lo) * (b - a), np.nan)
        return means, out
