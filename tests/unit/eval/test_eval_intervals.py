"""Bootstrap intervals over sources (cejobs.eval.intervals) and paired comparisons
(cejobs.eval.paired): known answers, scipy, resampling by hand, determinism, pairing rules."""

import numpy as np
import pytest
from scipy import stats

from cejobs.eval import metrics as M
from cejobs.eval import paired as P
from cejobs.eval.intervals import Bootstrap


def test_two_sources_known_answer():
    """Sources right / wrong: a resample's accuracy is 0, 1/2 or 1 with probabilities 1/4, 1/2,
    1/4, so the 2.5% and 97.5% quantiles of 2000 resamples are 0 and 1 (500 expected at
    each end; fewer than 51 would be needed to move them)."""
    boot = Bootstrap(2)
    reps = boot.ratio([1.0, 0.0], [1.0, 1.0])
    assert set(np.unique(reps)) == {0.0, 0.5, 1.0}
    assert boot.interval(0.5, reps) == {"value": 0.5, "low": 0.0, "high": 1.0}
    assert np.mean(reps == 0.5) == pytest.approx(0.5, abs=0.05)  # 22 standard errors


def test_mean_interval_agrees_with_scipy():
    """Percentile interval of a per-source mean against scipy.stats.bootstrap. Both are Monte
    Carlo with 20000 resamples: each endpoint's standard error is about 0.02 bootstrap standard
    deviations, so 0.15 of one is more than 5 standard errors of their difference."""
    x = np.random.default_rng(7).gamma(2.0, 1.0, size=40)
    boot = Bootstrap(40, n_resamples=20000, seed=3)
    ours = boot.interval(x.mean(), boot.ratio(x, np.ones(40)))
    ref = stats.bootstrap((x,), np.mean, n_resamples=20000, method="percentile",
                          confidence_level=0.95, random_state=np.random.default_rng(11))
    sd = ref.standard_error
    assert ours["low"] == pytest.approx(ref.confidence_interval.low, abs=0.15 * sd)
    assert ours["high"] == pytest.approx(ref.confidence_interval.high, abs=0.15 * sd)


def test_ces_of_a_source_are_resampled_together():
    """Each replicate equals the metric recomputed by hand on the CEs of the drawn sources."""
    rng = np.random.default_rng(0)
    n, k = 9, 6
    hits = rng.random((n, k)) < 0.6
    count = np.where(rng.random((n, k)) < 0.8, 1, 0)  # some CEs outside the group
    values = np.where(count == 1, rng.normal(2.0, 0.5, (n, k)), np.nan)
    boot = Bootstrap(n, n_resamples=50, seed=5)
    ratio = boot.ratio((hits * count).sum(1), count.sum(1))
    means, qs = boot.quantiles(values, [0.05, 0.5, 0.95])
    for b in range(50):
        drawn = boot.idx[b]
        assert ratio[b] == pytest.approx((hits * count)[drawn].sum() / count[drawn].sum())
        pool = values[drawn].ravel()
        pool = pool[np.isfinite(pool)]
        assert means[b] == pytest.approx(pool.mean(), rel=1e-12)
        np.testing.assert_allclose(qs[b], np.quantile(pool, [0.05, 0.5, 0.95]), rtol=1e-12)


def test_fit_replicates_equal_linear_fit_on_the_resample():
    rng = np.random.default_rng(1)
    d, conf = rng.uniform(1, 3, 12), rng.uniform(0.2, 1, 12)
    boot = Bootstrap(12, n_resamples=30, seed=2)
    reps = boot.fit(d, conf)
    for b in range(30):
        fit = M.linear_fit(d[boot.idx[b]], conf[boot.idx[b]])
        for key in ("slope", "intercept", "r2"):
            assert reps[key][b] == pytest.approx(fit[key], rel=1e-9, abs=1e-12)


def test_seeded_and_deterministic():
    y = np.arange(30) % 3
    t = np.tile(np.repeat(np.arange(3), 2), (30, 1))
    l2 = np.random.default_rng(4).uniform(0.5, 3.0, t.shape)
    a = M.distance_summary(y, t, l2, l2 / 4)
    assert a == M.distance_summary(y, t, l2, l2 / 4)
    c = M.distance_summary(y, t, l2, l2 / 4, boot=Bootstrap(30, seed=1))
    assert c["l2"]["all"]["q50"]["value"] == a["l2"]["all"]["q50"]["value"]
    assert c["l2"]["all"]["q50"]["low"] != a["l2"]["all"]["q50"]["low"]
    iv = a["l2"]["different_class"]["q50"]
    assert iv["low"] <= iv["value"] <= iv["high"]


def _store(name, l2, seed=0, index=None, per_class=1, split="test"):
    n = l2.shape[0]
    y = np.arange(n) % 2
    t = np.tile(np.repeat(np.arange(2), per_class), (n, 1))
    return P.StoreArrays(name, {"dataset": "digits", "split": split, "seed": seed},
                         np.arange(n) if index is None else index, y, t, l2, l2 / 10,
                         np.ones(n, bool))


def test_pairing_from_identities():
    l2 = np.ones((6, 2))
    a = _store("a", l2)
    assert P.pairing(a, _store("b", l2 + 1)) == "paired per CE"
    assert P.pairing(a, _store("b", np.ones((6, 4)), per_class=2)) == "paired per source"
    assert P.pairing(a, _store("b", l2, seed=1)) == "unpaired"
    assert P.pairing(a, _store("b", l2, split="train")) == "unpaired"
    assert P.pairing(a, _store("b", l2, index=np.arange(6) + 6)) == "unpaired"


def test_paired_difference_removes_source_variation():
    """b = a + 0.1 on every CE, with sources far apart: the paired difference is exactly 0.1
    in every resample, while an unpaired comparison of the same numbers is wide."""
    rng = np.random.default_rng(0)
    base = rng.uniform(1, 5, (40, 1)) + rng.normal(0, 0.01, (40, 2))
    a, b = _store("a", base), _store("b", base + 0.1)
    c = P.compare_stores(a, b, 500, 0)
    assert (c["pairing"], c["sources"]) == ("paired per CE", 40)
    diff = c["l2"]["mean"]["difference"]
    assert diff == pytest.approx({"value": -0.1, "low": -0.1, "high": -0.1})
    u = P.compare_stores(a, _store("b", base + 0.1, seed=1), 500, 0)
    assert u["pairing"] == "unpaired" and u["sources"] == [40, 40]
    ud = u["l2"]["mean"]["difference"]
    assert ud["value"] == pytest.approx(-0.1)
    # the spread of the sources: sd about 1.15, so the width is near 2 x 1.96 x 1.15 x
    # sqrt(2 / 40) = 1.0; half of that leaves room for the Monte Carlo error
    assert ud["high"] - ud["low"] > 0.5


def test_classifier_comparison_is_per_ce():
    y = np.array([0, 1, 0, 1])
    t = np.tile(np.array([0, 1]), (4, 1))
    sp = np.eye(2)[y]  # both classifiers right on every source
    said_target = np.eye(2)[t]
    said_source = np.eye(2)[np.tile(y[:, None], (1, 2))]
    valid = {"standard": np.ones(4, bool), "robust": np.ones(4, bool)}
    (row,) = P.compare_classifiers(y, t, np.ones((4, 2)), {"standard": sp, "robust": sp},
                                   {"standard": said_target, "robust": said_source}, valid,
                                   "standard", 200, 0)
    assert (row["classifier"], row["reference"], row["pairing"]) == ("robust", "standard",
                                                                      "paired per CE")
    assert row["prob_source_predicted"]["difference"] == {"value": 1.0, "low": 1.0, "high": 1.0}
    assert row["ce_accuracy_different"]["difference"]["value"] == -1.0
    assert row["r2"]["difference"] == {"value": None, "low": None, "high": None}  # d constant


def test_classifier_r2_difference_is_paired():
    """Same d, two confidence patterns: the r^2 difference equals the difference of the two
    fits on the full sample, and its replicates are differences on the same resamples."""
    rng = np.random.default_rng(2)
    n = 30
    y = np.zeros(n, dtype=int)
    t = np.tile(np.array([0, 1]), (n, 1))
    l2 = np.stack([np.zeros(n), rng.uniform(1, 3, n)], axis=1)  # d_i = l2[i, 1]
    conf_a = np.clip(0.2 * l2[:, 1] + rng.normal(0, 0.05, n), 0.01, 0.99)
    conf_b = rng.uniform(0.5, 0.99, n)
    prob = lambda c: np.stack([c, 1 - c], axis=1)
    ce = np.tile(prob(np.full(n, 0.2))[:, None], (1, 2, 1))
    valid = {"a": np.ones(n, bool), "b": np.ones(n, bool)}
    (row,) = P.compare_classifiers(y, t, l2, {"a": prob(conf_a), "b": prob(conf_b)},
                                   {"a": ce, "b": ce}, valid, "b", 300, 0)
    fa, fb = M.linear_fit(l2[:, 1], conf_a), M.linear_fit(l2[:, 1], conf_b)
    assert row["r2"]["difference"]["value"] == pytest.approx(fa["r2"] - fb["r2"])
    boot = Bootstrap(n, 300, 0)
    reps = boot.fit(l2[:, 1], conf_a)["r2"] - boot.fit(l2[:, 1], conf_b)["r2"]
    assert row["r2"]["difference"] == pytest.approx(boot.interval(fa["r2"] - fb["r2"], reps),
                                                    rel=1e-12)
