"""Evaluation figures as PNGs, modelled on the paper's figures 2-5 and 8 (arXiv 2404.10588).

Each `draw_*` function draws one figure on a fresh matplotlib `Figure` (no pyplot, no global
backend state) and returns it; its `plot_*` twin writes that figure as a PNG to `path` with the
Agg canvas and returns the path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PatchCollection
from matplotlib.figure import Figure
from matplotlib.patches import Rectangle

DPI = 120


def _save(fig: Figure, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def _v(x):
    """The value of an interval {"value", "low", "high"}, or x itself."""
    return x.get("value") if isinstance(x, dict) else x


def _ci(x, fmt: str = "{:.2f}") -> str:
    """ " [low, high]" of an interval, or "" when it has none."""
    if not isinstance(x, dict) or x.get("low") is None:
        return ""
    return f" [{fmt.format(x['low'])}, {fmt.format(x['high'])}]"


def _finite(a) -> np.ndarray:
    a = np.asarray(a, dtype=np.float64).ravel()
    return a[np.isfinite(a)]


def draw_distance_histograms(stores: dict, bins: int = 40, medians: dict | None = None
                             ) -> Figure:
    """Paper figs. 2 and 5: density histograms of the L2 and L0 distances of different-class
    CEs, one curve per store, on shared bins. stores: label -> (l2, l0, same_class_mask),
    arrays of one shape (e.g. (N, K)). medians (optional): label -> (L2, L0) median intervals
    {"value", "low", "high"}, drawn as a point with an error bar above the curves and
    written in the legend."""
    fig = Figure(figsize=(11, 4.2 + 0.2 * len(stores)), layout="constrained")
    axes = fig.subplots(1, 2)
    titles = (("L2 distance", "L2 = ||x - x_CE||_2 (image space)"),
              ("L0 distance", "L0 = fraction of the C*H*W elements with |x - x_CE| > 0.02"))
    for col, (ax, (title, xlabel)) in enumerate(zip(axes, titles)):
        data = {label: _finite(np.asarray(v[col])[~np.asarray(v[2], dtype=bool)])
                for label, v in stores.items()}
        pooled = np.concatenate([d for d in data.values()] + [np.zeros(0)])
        edges = np.histogram_bin_edges(pooled if pooled.size else [0.0, 1.0], bins=bins)
        marks = []
        for i, (label, d) in enumerate(data.items()):
            color = f"C{i % 10}"
            if d.size == 0:
                ax.plot([], [], color=color, label=f"{label} (no different-class CEs)")
                continue
            med = (medians or {}).get(label, (None, None))[col]
            leg = f"{label} (median {np.median(d):.3g}{_ci(med, '{:.3g}')}, n={d.size})"
            ax.hist(d, bins=edges, density=True, histtype="stepfilled", alpha=0.25, color=color)
            ax.hist(d, bins=edges, density=True, histtype="step", lw=1.6, color=color,
                    label=leg)
            if _ci(med):
                marks.append((i, color, med))
        top = ax.get_ylim()[1]
        for i, color, med in marks:  # the medians' intervals, above the curves
            ax.errorbar([med["value"]], [top * (1.03 + 0.05 * i)],
                        xerr=[[med["value"] - med["low"]], [med["high"] - med["value"]]],
                        fmt="o", ms=3, color=color, capsize=3, lw=1.2)
        if marks:
            ax.set_ylim(0, top * (1.08 + 0.05 * len(data)))
        ax.set_title(f"Different-class CEs: {title}", fontsize=11)
        ax.set_xlabel(xlabel)
        ax.set_ylabel("density")
        # below the panel, so that it hides no curve (inside, it covered the peaks)
        ax.legend(fontsize=8.5, frameon=False, loc="upper center", bbox_to_anchor=(0.5, -0.16))
        ax.grid(alpha=0.3)
    return fig


def plot_distance_histograms(path, stores: dict, bins: int = 40, medians: dict | None = None
                             ) -> Path:
    """draw_distance_histograms, written to `path` as a PNG."""
    return _save(draw_distance_histograms(stores, bins, medians), path)


def draw_confidence_vs_distance(per_classifier: dict, ncols: int = 3) -> Figure:
    """Paper fig. 3: confidence f(x)[y] against the mean L2 of the source's different-class
    CEs, one panel per classifier, with the least-squares line and r^2 in the title.
    per_classifier: name -> (d, conf, fit) or (d, conf, fit, correct), fit being
    metrics.linear_fit's dict or metrics.summarize's proximity_confidence (intervals: r^2's
    goes into the title); `correct` (bool) colours misclassified sources apart."""
    n = max(len(per_classifier), 1)
    ncols = min(ncols, n)
    nrows = -(-n // ncols)
    fig = Figure(figsize=(4.3 * ncols, 3.8 * nrows), layout="constrained")
    axes = np.atleast_1d(fig.subplots(nrows, ncols, sharey=True, squeeze=False)).ravel()
    for ax, (name, item) in zip(axes, per_classifier.items()):
        d, conf, fit = (np.asarray(item[0], float), np.asarray(item[1], float), item[2])
        correct = np.asarray(item[3], bool) if len(item) > 3 else np.ones(d.shape, bool)
        keep = np.isfinite(d) & np.isfinite(conf)  # sources without different-class CEs
        d, conf, correct = d[keep], conf[keep], correct[keep]
        size = 12 if d.size < 2000 else 4
        ax.scatter(d[correct], conf[correct], s=size, alpha=0.5, color="C0", lw=0,
                   label="correct")
        if (~correct).any():
            ax.scatter(d[~correct], conf[~correct], s=size, alpha=0.6, color="C3", lw=0,
                       label="misclassified")
        slope, intercept, r2v = _v(fit.get("slope")), _v(fit.get("intercept")), _v(fit.get("r2"))
        if slope is not None and d.size:
            xs = np.array([d.min(), d.max()])
            ax.plot(xs, intercept + slope * xs, color="k", lw=1.5,
                    label=f"fit: slope {slope:.3g}{_ci(fit.get('slope'), '{:.3g}')}")
        r2 = "n/a" if r2v is None else f"{r2v:.2f}{_ci(fit.get('r2'))}"
        ax.set_title(f"{name}: $r^2$ = {r2} (n={fit.get('n', d.size)})", fontsize=10)
        ax.set_xlabel("mean L2 of different-class CEs")
        ax.set_ylim(-0.03, 1.03)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    for ax in axes[: len(axes): ncols]:
        ax.set_ylabel("confidence f(x)[y]")
    for ax in axes[len(per_classifier):]:
        ax.set_visible(False)
    return fig


def plot_confidence_vs_distance(path, per_classifier: dict, ncols: int = 3) -> Path:
    """draw_confidence_vs_distance, written to `path` as a PNG."""
    return _save(draw_confidence_vs_distance(per_classifier, ncols), path)


def _yerr(df: pd.DataFrame, col: str, vals: np.ndarray) -> np.ndarray | None:
    """(2, n) distances from the bar (in %) to its interval, from the columns col_low and
    col_high; None when the table has none."""
    if f"{col}_low" not in df:
        return None
    low = 100 * pd.to_numeric(df[f"{col}_low"], errors="coerce").to_numpy(float)
    high = 100 * pd.to_numeric(df[f"{col}_high"], errors="coerce").to_numpy(float)
    return np.nan_to_num(np.stack([vals - low, high - vals]).clip(min=0))


def draw_accuracy_bars(table) -> Figure:
    """Paper fig. 4: grouped bars of clean, same-class CE and different-class CE accuracy per
    classifier, and a second panel of probability source predicted; one row of panels per
    store. table: a DataFrame (or records) with report.accuracy_table's columns classifier,
    clean_accuracy, ce_accuracy_same, ce_accuracy_different, prob_source_predicted (and
    store), and with NAME_low / NAME_high columns, error bars of those intervals."""
    df = pd.DataFrame(table)
    stores = list(dict.fromkeys(df["store"])) if "store" in df else [None]
    width_n = max(len(df) if s is None else int((df["store"] == s).sum()) for s in stores)
    fig = Figure(figsize=(max(8.0, 1.3 * width_n + 4), 2.9 * len(stores) + 1.0),
                 layout="constrained")
    axes = fig.subplots(len(stores), 2, gridspec_kw={"width_ratios": [2, 1]}, squeeze=False)
    series = (("clean_accuracy", "clean sources"), ("ce_accuracy_same", "same-class CEs"),
              ("ce_accuracy_different", "different-class CEs"))
    width = 0.8 / len(series)
    for (ax, ax2), store in zip(axes, stores):
        sub = df if store is None else df[df["store"] == store]
        x = np.arange(len(sub))
        for i, (col, name) in enumerate(series):
            vals = 100 * pd.to_numeric(sub[col], errors="coerce").to_numpy(float)
            bars = ax.bar(x + (i - 1) * width, np.nan_to_num(vals), width, label=name,
                          color=f"C{i}", yerr=_yerr(sub, col, vals), capsize=2,
                          error_kw={"lw": 0.8})
            ax.bar_label(bars, labels=[("n/a" if np.isnan(v) else f"{v:.0f}") for v in vals],
                         fontsize=7.5, padding=1)
        vals = 100 * pd.to_numeric(sub["prob_source_predicted"], errors="coerce").to_numpy(float)
        bars = ax2.bar(x, np.nan_to_num(vals), 0.6, color="C4",
                       yerr=_yerr(sub, "prob_source_predicted", vals), capsize=3,
                       error_kw={"lw": 0.8})
        ax2.bar_label(bars, labels=[("n/a" if np.isnan(v) else f"{v:.1f}") for v in vals],
                      fontsize=8, padding=1)
        where = f"{store}: " if store is not None and len(stores) > 1 else ""
        ax.set_title(f"{where}\naccuracy" if where else "accuracy", fontsize=11)
        ax2.set_title(f"{where}\nprob. source predicted" if where else "prob. source predicted",
                      fontsize=11)
        for a in (ax, ax2):
            a.set_xticks(x, [str(c) for c in sub["classifier"]], fontsize=9)
            a.set_ylim(0, 109)
            a.set_ylabel("%")
            a.grid(axis="y", alpha=0.3)
    fig.suptitle("Accuracy: argmax = label for sources, = target for CEs.  Prob. source "
                 "predicted: different-class CEs\nof correctly classified sources whose argmax "
                 "is the source label", fontsize=10)
    handles, labels = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=3, fontsize=8.5,
               frameon=False)
    return fig


def plot_accuracy_bars(path, table) -> Path:
    """draw_accuracy_bars, written to `path` as a PNG."""
    return _save(draw_accuracy_bars(table), path)


def _rgb(x) -> np.ndarray:
    """(C, H, W) in [0, 1] -> (H, W, 3): grayscale repeated for C = 1, the first 3 otherwise."""
    x = np.clip(np.asarray(x, dtype=np.float32), 0, 1)
    return np.repeat(x[0][..., None], 3, axis=-1) if x.shape[0] == 1 else np.moveaxis(x[:3], 0, -1)


def draw_ce_grid(source_x, source_y, ce_x, ce_target, ce_l2, max_sources: int = 8,
                 class_names=None) -> Figure:
    """Paper fig. 8: one row per source, its image and class first, then each of its CEs
    labelled with its target and L2. source_x (n, C, H, W), ce_x (n, K, C, H, W) in [0, 1];
    C = 1 is drawn in grayscale, C = 3 as RGB, with nearest-neighbour pixels.

    All images go into one mosaic drawn by a single imshow (one axes per image is ~50x
    slower for 8 x 21 cells)."""
    n = min(len(source_x), max_sources)
    k = np.shape(ce_x)[1]
    _, h, w = np.shape(source_x)[1:]
    name = (lambda c: str(class_names[c])) if class_names is not None else str
    gap, band = max(1, round(0.12 * w)), max(2, round(0.4 * h))  # pixels between / above cells
    pw, ph = w + gap, h + band  # pitch of a cell
    canvas = np.ones((n * ph + gap, (k + 1) * pw + gap, 3), dtype=np.float32)
    cell_in = min(1.0, 30.0 / ((k + 1) * pw / w))  # inches per cell, figure <= ~30 in wide
    scale = cell_in / max(h, w)  # inches per canvas pixel
    title_in = 0.4
    fig = Figure(figsize=(canvas.shape[1] * scale, canvas.shape[0] * scale + title_in))
    img_h = canvas.shape[0] * scale / fig.get_figheight()
    ax = fig.add_axes((0, 0, 1, img_h))
    frames, labels = [], []
    for i in range(n):
        y = int(source_y[i])
        y0 = i * ph + band
        cells = [(source_x[i], f"source: {name(y)}", "bold", "black")]
        cells += [(ce_x[i][j], f"\u2192 {name(int(ce_target[i][j]))}\nL2={float(ce_l2[i][j]):.2f}",
                   "normal", "0.5" if int(ce_target[i][j]) == y else "black") for j in range(k)]
        for j, (img, text, weight, color) in enumerate(cells):
            x0 = gap + j * pw
            canvas[y0:y0 + h, x0:x0 + w] = _rgb(img)
            frames.append(Rectangle((x0 - 0.5, y0 - 0.5), w, h))
            labels.append((x0 + w / 2 - 0.5, y0 - 0.5 - 0.08 * h, text, weight, color))
    ax.imshow(canvas, interpolation="nearest", aspect="equal")
    edge = ["C3" if j % (k + 1) == 0 else "0.35" for j in range(len(frames))]
    ax.add_collection(PatchCollection(frames, facecolor="none", edgecolor=edge,
                                      linewidth=[2.0 if e == "C3" else 0.6 for e in edge]))
    for x, yy, text, weight, color in labels:
        ax.text(x, yy, text, ha="center", va="bottom", fontsize=7.5, fontweight=weight,
                color=color, linespacing=1.0)
    ax.set_axis_off()
    fig.suptitle("Sources (left, red frame) and their CEs: target class and L2 distance "
                 "(grey: same-class)", fontsize=12, y=1 - 0.1 * title_in / fig.get_figheight())
    return fig


def plot_ce_grid(path, source_x, source_y, ce_x, ce_target, ce_l2, max_sources: int = 8,
                 class_names=None) -> Path:
    """draw_ce_grid, written to `path` as a PNG."""
    return _save(draw_ce_grid(source_x, source_y, ce_x, ce_target, ce_l2, max_sources,
                              class_names), path)
