"""Artifacts of evaluation: each figure draws the data it is given (bar heights, histogram bins
and heights, scatter points and fit lines, image cells), with its titles and labels; the report
lists every store and classifier and says which part of a partial store was evaluated."""

import json

import matplotlib.image as mpimg
import numpy as np
import pandas as pd
import pytest
from matplotlib.container import BarContainer

from cejobs.eval import figures as F
from cejobs.eval import metrics as M
from cejobs.eval import report as R

RNG = np.random.default_rng(0)
N, C, PER = 6, 3, 2
Y = np.array([0, 1, 2, 0, 1, 2])
TARGET = np.tile(np.repeat(np.arange(C), PER), (N, 1))
SAME = TARGET == Y[:, None]
L2 = RNG.uniform(0.5, 3.0, TARGET.shape)
L0 = RNG.uniform(0.0, 1.0, TARGET.shape)


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


def _steps(ax) -> list:
    """The outline (histtype="step") polygons of a histogram panel, in drawing order."""
    return [patch for patch in ax.patches if not patch.get_fill()]


def _edges_and_heights(polygon) -> tuple[np.ndarray, np.ndarray]:
    """A step outline's vertices are (e0, 0), (e0, h0), (e1, h0), (e1, h1), ..., (en, 0)."""
    xy = polygon.get_xy()
    return xy[0::2, 0], xy[1::2, 1][:-1]


def test_distance_histogram_of_known_values():
    """4 values on 4 bins of width 0.625: density = count / (4 * 0.625) = 0.4 per value."""
    l2 = np.array([[1.0, 2.0, 3.0, 3.5]])
    l0 = np.array([[0.1, 0.1, 0.1, 0.5]])
    fig = F.draw_distance_histograms({"a": (l2, l0, np.zeros((1, 4), bool))}, bins=4)
    l2_ax, l0_ax = fig.axes
    [l2_step] = _steps(l2_ax)
    edges, heights = _edges_and_heights(l2_step)
    np.testing.assert_allclose(edges, [1.0, 1.625, 2.25, 2.875, 3.5])
    np.testing.assert_allclose(heights, [0.4, 0.4, 0.0, 0.8])
    [l0_step] = _steps(l0_ax)
    edges, heights = _edges_and_heights(l0_step)
    np.testing.assert_allclose(edges, [0.1, 0.2, 0.3, 0.4, 0.5])
    np.testing.assert_allclose(heights, [7.5, 0.0, 0.0, 2.5])  # 3 and 1 of 4 values, width 0.1
    assert [t.get_text() for t in l2_ax.get_legend().get_texts()] == ["a (median 2.5, n=4)"]


def test_distance_histograms(tmp_path):
    stores = {"boltzmann": (L2, L0, SAME), "gaussian": (2 * L2, L0 ** 0.5, SAME),
              "empty": (L2, L0, np.ones_like(SAME))}
    fig = F.draw_distance_histograms(stores)
    titles = [("Different-class CEs: L2 distance", "L2 = ||x - x_CE||_2 (image space)"),
              ("Different-class CEs: L0 distance",
               "L0 = fraction of the C*H*W elements with |x - x_CE| > 0.02")]
    for col, (ax, (title, xlabel)) in enumerate(zip(fig.axes, titles)):
        assert (ax.get_title(), ax.get_xlabel(), ax.get_ylabel()) == (title, xlabel, "density")
        values = {name: np.asarray(v[col])[~v[2]] for name, v in stores.items()}
        shared = np.histogram_bin_edges(np.concatenate(list(values.values())), bins=40)
        steps = _steps(ax)  # one outline per store with different-class CEs: not "empty"
        assert len(steps) == 2
        for step, name in zip(steps, ("boltzmann", "gaussian")):
            edges, heights = _edges_and_heights(step)
            np.testing.assert_allclose(edges, shared)
            want, _ = np.histogram(values[name], bins=shared, density=True)
            np.testing.assert_allclose(heights, want)
        legend = [t.get_text() for t in ax.get_legend().get_texts()]
        n = int((~SAME).sum())
        assert legend == [f"boltzmann (median {np.median(values['boltzmann']):.3g}, n={n})",
                          f"gaussian (median {np.median(values['gaussian']):.3g}, n={n})",
                          "empty (no different-class CEs)"]


def test_confidence_vs_distance(tmp_path):
    d = M.mean_different_class_distance(Y, TARGET, L2)
    conf = np.linspace(0.3, 0.9, N)
    fit = M.linear_fit(d, conf)
    per = {"standard": (d, conf, fit),
           "robust": (d, conf[::-1], M.linear_fit(d, conf[::-1]), conf > 0.5),
           "constant d": (np.ones(N), conf, M.linear_fit(np.ones(N), conf))}
    standard, robust, constant = F.draw_confidence_vs_distance(per).axes
    assert standard.get_title() == f"standard: $r^2$ = {fit['r2']:.2f} (n=6)"
    assert standard.get_xlabel() == "mean L2 of different-class CEs"
    assert standard.get_ylabel() == "confidence f(x)[y]"
    [dots] = standard.collections
    np.testing.assert_allclose(dots.get_offsets(), np.column_stack([d, conf]))
    [line] = standard.lines  # the least-squares line across the data's L2 range
    np.testing.assert_allclose(line.get_xdata(), [d.min(), d.max()])
    np.testing.assert_allclose(line.get_ydata(),
                               fit["intercept"] + fit["slope"] * np.array([d.min(), d.max()]))
    correct, wrong = robust.collections  # misclassified sources (conf <= 0.5) drawn apart
    points = np.column_stack([d, conf[::-1]])
    np.testing.assert_allclose(correct.get_offsets(), points[2:])
    np.testing.assert_allclose(wrong.get_offsets(), points[:2])
    assert constant.get_title() == "constant d: $r^2$ = n/a (n=6)" and not constant.lines


def _bars(ax) -> dict[str, list[float]]:
    return {c.get_label(): [bar.get_height() for bar in c]
            for c in ax.containers if isinstance(c, BarContainer)}


def test_accuracy_bars(tmp_path):
    """Every source is classified correctly; `standard` predicts each CE as its target and
    `robust_eps1` as its source's label (see _results), so every bar is 0 or 100 %."""
    fig = F.draw_accuracy_bars(R.accuracy_table(_results()))
    (b_acc, b_prob), (g_acc, g_prob) = np.reshape(fig.axes, (2, 2))
    assert [ax.get_title() for ax in fig.axes] == [
        "boltzmann: \naccuracy", "boltzmann: \nprob. source predicted",
        "gaussian: \naccuracy", "gaussian: \nprob. source predicted"]
    assert [t.get_text() for t in b_acc.get_xticklabels()] == ["standard", "robust_eps1"]
    assert [t.get_text() for t in g_prob.get_xticklabels()] == ["standard"]
    assert _bars(b_acc) == {"clean sources": [100, 100], "same-class CEs": [100, 100],
                            "different-class CEs": [100, 0]}
    assert list(_bars(b_prob).values()) == [[0, 100]]
    assert _bars(g_acc) == {"clean sources": [100], "same-class CEs": [100],
                            "different-class CEs": [100]}
    assert list(_bars(g_prob).values()) == [[0]]
    assert b_acc.get_ylabel() == "%" and b_acc.get_ylim() == (0, 109)


@pytest.mark.parametrize("c, hw", [(1, 8), (3, 16)])
def test_ce_grid(tmp_path, c, hw):
    sx = RNG.random((N, c, hw, hw))
    cx = RNG.random((N, TARGET.shape[1], c, hw, hw))
    fig = F.draw_ce_grid(sx, Y, cx, TARGET, L2, max_sources=3,
                         class_names=["zero", "one", "two"])
    [ax] = fig.axes
    [image] = ax.get_images()
    canvas = np.asarray(image.get_array())
    gap, band = max(1, round(0.12 * hw)), max(2, round(0.4 * hw))  # pixels between cells
    k = TARGET.shape[1]
    assert canvas.shape == (3 * (hw + band) + gap, (k + 1) * (hw + gap) + gap, 3)

    def cell(row, col):
        y0, x0 = row * (hw + band) + band, gap + col * (hw + gap)
        return canvas[y0:y0 + hw, x0:x0 + hw]

    def rgb(x):
        return np.repeat(x[0][..., None], 3, -1) if c == 1 else np.moveaxis(x, 0, -1)

    for row in range(3):
        np.testing.assert_allclose(cell(row, 0), rgb(sx[row]), atol=1e-7)
        for j in range(k):
            np.testing.assert_allclose(cell(row, j + 1), rgb(cx[row, j]), atol=1e-7)
    texts = [t.get_text() for t in ax.texts]
    assert len(texts) == 3 * (k + 1)
    assert texts[0] == "source: zero" and texts[k + 1] == "source: one"
    assert texts[3] == f"\u2192 one\nL2={L2[0, 2]:.2f}"
    same = [t.get_color() for t in ax.texts[1:k + 1]]  # source 0 (zero): targets 0, 0, 1, ...
    assert same == ["0.5", "0.5", "black", "black", "black", "black"]
    path = F.plot_ce_grid(tmp_path / "grid.png", sx, Y, cx, TARGET, L2, max_sources=3)
    height, width = mpimg.imread(path).shape[:2]  # the PNG holds the figure at F.DPI
    assert (height, width) == tuple(round(F.DPI * v) for v in fig.get_size_inches()[::-1])


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
