"""Known answers for cejobs.eval.metrics on a hand-made store.

N = 4 sources, C = 3 classes, per_class = 2, so K = 6 and every row of ce_target is
[0, 0, 1, 1, 2, 2]. Labels y = [0, 1, 2, 0].
"""

import json

import numpy as np
import pytest
from scipy import stats

from cejobs.eval import metrics as M

Y = np.array([0, 1, 2, 0])
TARGET = np.tile(np.array([0, 0, 1, 1, 2, 2]), (4, 1))
# source predictions: 0, 1, 0 (wrong), 0; confidences f(x)[y] = 0.9, 0.6, 0.2, 0.5
SOURCE_PROB = np.array([[0.9, 0.05, 0.05], [0.3, 0.6, 0.1], [0.5, 0.3, 0.2], [0.5, 0.3, 0.2]])
# argmax of each CE; the softmax puts 0.8 there and 0.1 elsewhere
CE_PRED = np.array([
    [0, 0, 1, 0, 2, 0],  # same 2/2; different 2/4 right, 2/4 say y=0
    [0, 1, 1, 1, 1, 1],  # same 2/2; different 1/4 right, 3/4 say y=1
    [2, 0, 1, 1, 2, 0],  # same 1/2; different 3/4 right (source misclassified)
    [1, 0, 0, 0, 2, 2],  # same 1/2; different 2/4 right, 2/4 say y=0
])
CE_PROB = np.full((4, 6, 3), 0.1)
np.put_along_axis(CE_PROB, CE_PRED[..., None], 0.8, axis=-1)
# per-class L2: different-class means d = 1, 2, 3, 4
# per-class means: src0 [0.6, 1, 1], src1 [2.5, 0.5, 1.5], src2 [1.5, 4.5, 2], src3 [3, 4, 4]
L2 = np.array([
    [0.5, 0.7, 0.8, 1.2, 1.0, 1.0],
    [2.5, 2.5, 0.4, 0.6, 1.5, 1.5],
    [1.0, 2.0, 4.0, 5.0, 2.0, 2.0],
    [3.0, 3.0, 3.0, 5.0, 4.0, 4.0],
])
L0 = np.where(TARGET == Y[:, None], 0.1, 0.3)


def V(x):
    """The point estimates of a summary: every {value, low, high} replaced by its value."""
    if isinstance(x, dict):
        if set(x) == {"value", "low", "high"}:
            return x["value"]
        return {k: V(v) for k, v in x.items() if not ("value" in x and k in ("low", "high"))}
    return [V(v) for v in x] if isinstance(x, list) else x


def test_clean_and_ce_accuracy():
    assert M.clean_accuracy(Y, SOURCE_PROB) == pytest.approx(3 / 4)
    acc = M.ce_accuracy(Y, TARGET, CE_PROB)
    assert acc == {"same_class": pytest.approx(6 / 8), "different_class": pytest.approx(8 / 16),
                   "n_same_class": 8, "n_different_class": 16}


def test_prob_source_predicted_skips_misclassified_sources():
    # sources 0, 1, 3: 12 different-class CEs, 2 + 3 + 2 predicted as the source label
    assert M.prob_source_predicted(Y, TARGET, SOURCE_PROB, CE_PROB) == {
        "value": pytest.approx(7 / 12), "n": 12}


def test_proximity_confidence_by_hand():
    np.testing.assert_allclose(M.mean_different_class_distance(Y, TARGET, L2), [1, 2, 3, 4])
    pc = M.proximity_confidence(Y, TARGET, L2, SOURCE_PROB)
    # d = 1..4 (mean 2.5, Sxx = 5); conf = .9 .6 .2 .5 (mean .55, Syy = .25); Sxy = -0.8
    assert pc["n"] == 4
    assert pc["slope"] == pytest.approx(-0.16)
    assert pc["intercept"] == pytest.approx(0.95)
    assert pc["r2"] == pytest.approx(0.64 / 1.25)
    fit = stats.linregress([1, 2, 3, 4], [0.9, 0.6, 0.2, 0.5])
    assert pc["r2"] == pytest.approx(fit.rvalue**2)
    q = pc["quartiles"]
    assert q["edges"] == pytest.approx([1, 1.75, 2.5, 3.25, 4])
    assert q["count"] == [1, 1, 1, 1]
    assert q["accuracy"] == [1.0, 1.0, 0.0, 1.0]
    assert q["mean_confidence"] == pytest.approx([0.9, 0.6, 0.2, 0.5])


def test_ce_distance_classifier():
    # argmin of the per-class means: 0, 1, 0 (wrong: y = 2), 0
    assert M.ce_distance_classifier(Y, TARGET, L2, 3) == {"accuracy": pytest.approx(3 / 4), "n": 4}


def test_distance_summary_quantiles():
    ds = V(M.distance_summary(Y, TARGET, L2, L0))
    # same-class L2 sorted: .4 .5 .6 .7 2 2 3 3 (np.quantile, linear interpolation)
    assert ds["l2"]["same_class"] == pytest.approx(
        {"n": 8, "mean": 12.2 / 8, "q05": 0.435, "q25": 0.575, "q50": 1.35, "q75": 2.25,
         "q95": 3.0})
    diff = ds["l2"]["different_class"]
    assert (diff["n"], diff["mean"], diff["q50"]) == (16, pytest.approx(2.5), pytest.approx(2.25))
    assert ds["l0"]["same_class"]["q50"] == pytest.approx(0.1)
    assert ds["l0"]["all"] == pytest.approx(
        {"n": 24, "mean": 5.6 / 24, "q05": 0.1, "q25": 0.1, "q50": 0.3, "q75": 0.3, "q95": 0.3})
    assert ds["ce_distance_classifier"] == {"accuracy": pytest.approx(0.75), "n": 4}
    assert ds["sources"] == {"total": 4, "evaluated": 4}


def test_summarize_with_valid_mask_and_shards():
    valid = np.array([True, True, False, False])
    s = M.summarize(Y, TARGET, L2, SOURCE_PROB, CE_PROB, valid, shard_size=2)
    json.dumps(s, allow_nan=False)
    s = V(s)
    assert s["sources"] == {"total": 4, "evaluated": 2, "n_shards": 2, "shards": [0]}
    assert s["clean_accuracy"] == 1.0
    assert s["ce_accuracy"]["same_class"] == 1.0
    assert s["ce_accuracy"]["different_class"] == pytest.approx(3 / 8)
    assert s["prob_source_predicted"] == {"value": pytest.approx(5 / 8), "n": 8}
    # two points (1, .9), (2, .6): a perfect line
    pc = s["proximity_confidence"]
    assert (pc["slope"], pc["intercept"], pc["r2"]) == pytest.approx((-0.3, 1.2, 1.0))


def test_argmax_and_argmin_ties_take_lowest_index():
    prob = np.array([[0.4, 0.4, 0.2]])
    assert M.clean_accuracy([1], prob) == 0.0
    assert M.clean_accuracy([0], prob) == 1.0
    # per-class mean L2 = [2, 1, 1]: a tie between classes 1 and 2 goes to 1
    t, l2 = np.array([[0, 1, 2]]), np.array([[2.0, 1.0, 1.0]])
    assert M.ce_distance_classifier([1], t, l2, 3)["accuracy"] == 1.0
    assert M.ce_distance_classifier([2], t, l2, 3)["accuracy"] == 0.0


def test_no_different_class_ces():
    t = np.tile(Y[:, None], (1, 2))  # every CE targets its source's own class
    l2 = np.ones((4, 2))
    prob = np.tile(SOURCE_PROB[:, None], (1, 2, 1))
    s = M.summarize(Y, t, l2, SOURCE_PROB, prob)
    json.dumps(s, allow_nan=False)
    s = V(s)
    assert s["ce_accuracy"]["different_class"] is None
    assert s["ce_accuracy"]["n_different_class"] == 0
    assert s["prob_source_predicted"] == {"value": None, "n": 0}
    pc = s["proximity_confidence"]
    assert (pc["n"], pc["r2"], pc["slope"]) == (0, None, None)
    assert pc["quartiles"]["count"] == [0, 0, 0, 0]
    ds = M.distance_summary(Y, t, l2, l2, num_classes=3)
    json.dumps(ds, allow_nan=False)
    ds = V(ds)
    assert ds["l2"]["different_class"]["n"] == 0
    assert ds["l2"]["different_class"]["q50"] is None
    assert ds["ce_distance_classifier"] == {"accuracy": None, "n": 0}


def test_degenerate_fits_and_empty_bins():
    assert M.linear_fit([2, 2, 2], [0.1, 0.5, 0.9]) == {
        "n": 3, "slope": None, "intercept": None, "r2": None}
    assert M.linear_fit([1, 2, 3], [0.5, 0.5, 0.5]) == {
        "n": 3, "slope": 0.0, "intercept": 0.5, "r2": None}
    assert M.linear_fit(np.arange(6), np.full(6, 0.8))["slope"] == 0.0  # not 1e-30
    assert M.linear_fit([1], [0.5])["slope"] is None
    # ties: edges [1, 1, 1, 1.25, 2]; bins [e_j, e_j+1) leave the first two empty
    q = M.quartile_bins([1, 1, 1, 2], [True, False, True, True])
    assert q["count"] == [0, 0, 3, 1]
    assert q["accuracy"] == [None, None, pytest.approx(2 / 3), 1.0]


def test_nothing_valid():
    s = M.summarize(Y, TARGET, L2, SOURCE_PROB, CE_PROB, np.zeros(4, bool))
    json.dumps(s, allow_nan=False)
    s = V(s)
    assert s["clean_accuracy"] is None and s["sources"]["evaluated"] == 0
    assert s["proximity_confidence"]["quartiles"]["edges"] is None


def test_shape_errors():
    with pytest.raises(ValueError, match="valid mask"):
        M.clean_accuracy(Y, SOURCE_PROB, np.ones(3, bool))
    with pytest.raises(ValueError, match="classes"):
        M.summarize(Y, TARGET, L2, SOURCE_PROB, CE_PROB[..., :2])
    with pytest.raises(ValueError, match="ce_l2"):
        M.distance_summary(Y, TARGET, L2[:, :5], L0)
