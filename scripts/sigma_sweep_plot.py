"""The figure and table of scripts/sigma_sweep.sh, from the evaluation's summary.json.

    python scripts/sigma_sweep_plot.py runs/sigma-sweep/eval/summary.json FIGURE.png > table.md

Stores are named sigma-<sigma_CE>; classifiers standard (eps 0) and l2-eps<E>. Panels, against
the median L2 of each store's different-class CEs (x error bars: its interval): (a) probability
source predicted per classifier, (b) that probability minus the standard classifier's on the
same CEs (paired per CE), (c) different-class CE accuracy. Dotted lines: each model's eps.
Every number is read from summary.json; error bars are its 95% bootstrap intervals.
"""

from __future__ import annotations

import json
import re
import sys

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure


def _comparisons(summary: dict, kind: str) -> list[dict]:
    """The comparisons ("stores" or "classifiers") of every store in summary.json."""
    return [c for s in summary["stores"] for c in s.get("comparisons", {}).get(kind, [])]


def eps_of(name: str) -> float:
    m = re.fullmatch(r"l2-eps([0-9.]+)", name)
    return float(m.group(1)) if m else 0.0


def sigma_of(name: str) -> float:
    m = re.fullmatch(r"sigma-([0-9.]+)", name)
    if not m:
        raise ValueError(f"store {name!r} is not named sigma-<sigma_CE>")
    return float(m.group(1))


def _err(iv: dict) -> tuple[float, float, float]:
    v = iv["value"]
    if v is None:
        return np.nan, 0.0, 0.0
    return v, v - (iv["low"] if iv["low"] is not None else v), \
        (iv["high"] if iv["high"] is not None else v) - v


def collect(summary: dict) -> tuple[list[dict], list[str]]:
    """One row per store (sorted by sigma): sigma, median L2 interval, and per classifier its
    P(source), CE accuracy (different class) and the paired P(source) difference to standard."""
    diffs = {(c["store"], c["classifier"]): c["prob_source_predicted"]["difference"]
             for c in _comparisons(summary, "classifiers")}
    rows, clfs = [], []
    for s in summary["stores"]:
        row = {"store": s["name"], "sigma": sigma_of(s["name"]),
               "l2": s["distances"]["l2"]["different_class"]["q50"],
               "l0": s["distances"]["l0"]["different_class"]["q50"], "clf": {}}
        for clf, c in s["classifiers"].items():
            clfs.append(clf) if clf not in clfs else None
            row["clf"][clf] = {"psp": c["prob_source_predicted"],
                               "acc": c["ce_accuracy"]["different_class"],
                               "diff": diffs.get((s["name"], clf))}
        rows.append(row)
    return sorted(rows, key=lambda r: r["sigma"]), sorted(clfs, key=eps_of)


def plot(rows: list[dict], clfs: list[str], path: str) -> None:
    fig = Figure(figsize=(15, 4.6), layout="constrained")
    axes = fig.subplots(1, 3)
    x = np.array([_err(r["l2"]) for r in rows])
    panels = (("psp", "P(source predicted) %", "(a) different-class CEs predicted as the source"),
              ("diff", "minus standard, points %",
               "(b) P(source) minus standard's (paired per CE)"),
              ("acc", "CE accuracy, different class %", "(c) different-class CEs on target"))
    for ax, (key, ylabel, title) in zip(axes, panels):
        for i, clf in enumerate(clfs):
            ivs = [r["clf"].get(clf, {}).get(key) for r in rows]
            if key == "diff" and clf == "standard" or any(iv is None for iv in ivs):
                continue
            y = 100 * np.array([_err(iv) for iv in ivs])
            ax.errorbar(x[:, 0], y[:, 0], xerr=x[:, 1:].T, yerr=y[:, 1:].T, marker="o", ms=4,
                        capsize=3, lw=1.3, color=f"C{i}", label=f"{clf} (eps {eps_of(clf):g})")
            if eps_of(clf) > 0:
                ax.axvline(eps_of(clf), color=f"C{i}", ls=":", lw=1)
        for r, xv in zip(rows, x[:, 0]):
            ax.annotate(f"σ={r['sigma']:g}", (xv, ax.get_ylim()[1]), fontsize=7.5, ha="left",
                        va="top", color="0.3", rotation=-60, rotation_mode="anchor")
        if key == "diff":
            ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel("median L2 of different-class CEs (dotted: each model's eps)")
        ax.set_ylabel(ylabel)
        ax.set_title(title, fontsize=10.5)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Boltzmann CEs of the digits test split at several sigma_CE; 95% bootstrap "
                 "intervals over sources", fontsize=11)
    FigureCanvasAgg(fig)
    fig.savefig(path, dpi=120, format="png")


def _ci(iv: dict | None, pct: bool = True) -> str:
    if iv is None or iv["value"] is None:
        return "n/a"
    f = (lambda v: f"{100 * v:.1f}") if pct else (lambda v: f"{v:.2f}")
    lo = "?" if iv["low"] is None else f(iv["low"])
    hi = "?" if iv["high"] is None else f(iv["high"])
    return f"{f(iv['value'])} [{lo}, {hi}]"


def table(rows: list[dict], clfs: list[str]) -> str:
    head = ["sigma_CE", "L2 median", "L0 median"] + [f"P(source) % {c}" for c in clfs] + \
        [f"{c} minus standard, points" for c in clfs if c != "standard"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        cells = [f"{r['sigma']:g}", _ci(r["l2"], False), _ci(r["l0"], False)]
        cells += [_ci(r["clf"].get(c, {}).get("psp")) for c in clfs]
        cells += [_ci(r["clf"].get(c, {}).get("diff")) for c in clfs if c != "standard"]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            rows, clfs = collect(json.load(f))
    except (OSError, ValueError, KeyError) as exc:
        print(f"sigma_sweep_plot: {argv[0]}: {exc!r}", file=sys.stderr)
        return 2
    plot(rows, clfs, argv[1])
    print(table(rows, clfs))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
