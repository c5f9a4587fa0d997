"""Artifacts of evaluation: figures are valid PNGs of sensible size; the report lists every
store and classifier and says which part of a partial store was evaluated."""

import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest

from cejobs.eval import figures as F
from cejobs.eval import metrics as M
from cejobs.eval import report as R

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
RNG = np.random.default_rng(0)
N, C, PER = 6, 3, 2
Y = np.array([0, 1, 2, 0, 1, 2])
TARGET = np.tile(np.repeat(np.arange(C), PER), (N, 1))
SAME = TARGET == Y[:, None]
L2 = RNG.uniform(0.5, 3.0, TARGET.shape)
L0 = RNG.uniform(0.0, 1.0, TARGET.shape)


def _check_png(path):
    assert path.read_bytes()[:8] == PNG_SIGNATURE
    h, w = mpimg.imread(path).shape[:2]
    assert 300 < w < 4000 and 200 < h < 4000, (w, h)


def _probs(shape, labels, p):
    out = np.full(shape + (C,), (1 - p) / (C - 1))
    np.put_along_axis(out, np.asarray(labels)[..., None], p, axis=-1)
    return out


def _results():
    sp = _probs((N,), Y, 0.8)
    clf = {"standard": M.summarize(Y, TARGET, L2, sp, _probs(TARGET.shape, TARGET, 0.7)),
           "robust_eps1": M.summarize(Y, TARGET, L2, sp, _probs(TARGET.shape, np.tile(Y[:, None],
                                      (1, 6)), 0.6), np.arange(N) < 4, shard_size=2)}
    ds = M.distance_summary(Y, TARGET, L2, L0, shard_size=2)
    return [R.StoreResult("boltzmann", ds, clf, "runs/b.zarr", {"method": "boltzmann"}),
            R.StoreResult("gaussian", ds, {"standard": clf["standard"]}, "runs/g.zarr")]


def test_distance_histograms(tmp_path):
    stores = {"boltzmann": (L2, L0, SAME), "gaussian": (2 * L2, L0 ** 0.5, SAME),
              "empty": (L2, L0, np.ones_like(SAME))}
    _check_png(F.plot_distance_histograms(tmp_path / "hist.png", stores))


def test_confidence_vs_distance(tmp_path):
    d = M.mean_different_class_distance(Y, TARGET, L2)
    conf = np.linspace(0.3, 0.9, N)
    per = {"standard": (d, conf, M.linear_fit(d, conf)),
           "robust": (d, conf[::-1], M.linear_fit(d, conf[::-1]), conf > 0.5),
           "constant d": (np.ones(N), conf, M.linear_fit(np.ones(N), conf))}
    _check_png(F.plot_confidence_vs_distance(tmp_path / "scatter.png", per))


def test_accuracy_bars(tmp_path):
    table = R.accuracy_table(_results())
    _check_png(F.plot_accuracy_bars(tmp_path / "bars.png", table))


@pytest.mark.parametrize("c, hw", [(1, 8), (3, 16)])
def test_ce_grid(tmp_path, c, hw):
    sx = RNG.random((N, c, hw, hw))
    cx = RNG.random((N, TARGET.shape[1], c, hw, hw))
    path = F.plot_ce_grid(tmp_path / "grid.png", sx, Y, cx, TARGET, L2, max_sources=3,
                          class_names=["zero", "one", "two"])
    _check_png(path)


def test_report_lists_every_store_and_classifier(tmp_path):
    results = _results()
    paths = R.write_outputs(tmp_path, results, figures=("figures/hist.png",))
    md = paths["report"].read_text()
    for name in ("boltzmann", "gaussian", "standard", "robust_eps1", "runs/b.zarr"):
        assert name in md
    assert "partial evaluation, robust_eps1: evaluated 4 of 6 sources (shards 0-1 of 3)" in md
    assert "![hist](figures/hist.png)" in md
    summary = json.loads(paths["summary"].read_text())
    assert [s["name"] for s in summary["stores"]] == ["boltzmann", "gaussian"]
    assert set(summary["stores"][0]["classifiers"]) == {"standard", "robust_eps1"}
    acc = pd.read_csv(paths["accuracy"])
    assert list(zip(acc["store"], acc["classifier"])) == [
        ("boltzmann", "standard"), ("boltzmann", "robust_eps1"), ("gaussian", "standard")]
    # standard: every CE predicted as its target; robust: every CE predicted as the source label
    assert list(acc["ce_accuracy_different"]) == [1.0, 0.0, 1.0]
    assert list(acc["prob_source_predicted"]) == [0.0, 1.0, 0.0]
    assert len(pd.read_csv(paths["quartiles"])) == 3 * 4
    assert len(pd.read_csv(paths["distances"])) == 2 * 2 * 3
    assert list(pd.read_csv(paths["ce_distance_classifier"])["store"]) == ["boltzmann", "gaussian"]
    text = R.format_table(results)
    assert text.splitlines()[2].split()[:3] == ["boltzmann", "robust_eps1", "4/6*"]
    assert "partial evaluation" in text.splitlines()[-1]


def test_report_notes(tmp_path):
    assert R.coverage_note({"total": 200, "evaluated": 200}) is None
    assert R.coverage_note({"total": 200, "evaluated": 120, "n_shards": 10,
                            "shards": [0, 1, 2, 3, 4, 5]}) == \
        "evaluated 120 of 200 sources (shards 0-5 of 10)"
    assert R._ranges([0, 2, 3, 7]) == "0, 2-3, 7"
    with pytest.raises(ValueError, match="unique"):
        R.write_outputs(tmp_path, [_results()[0], _results()[0]])
