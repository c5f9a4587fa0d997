"""After the shards: metrics of each store from its (N, K)-sized arrays (cejobs.eval.metrics),
then the figures (cejobs.eval.figures). The report and tables are cejobs.eval.report."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from cejobs.eval.figures import (plot_accuracy_bars, plot_ce_grid, plot_confidence_vs_distance,
                                 plot_distance_histograms)
from cejobs.eval.metrics import distance_summary, mean_different_class_distance, summarize
from cejobs.eval.paired import StoreArrays, compare_classifiers, compare_stores
from cejobs.eval.report import StoreResult, accuracy_table, write_outputs
from cejobs.jobs.eval_inputs import Classifier
from cejobs.eval.intervals import N_RESAMPLES, SEED, Bootstrap
from cejobs.store.layout import eval_prefix
from cejobs.store.storage import Storage
from cejobs.store.store import CEStore

GRID_SOURCES = 8  # sources drawn in each store's CE grid


def _rows_mask(done: np.ndarray, shard_size: int, n: int) -> np.ndarray:
    return np.repeat(done, shard_size)[:n]


def _info(store: CEStore, labels: dict[str, str]) -> dict:
    cfg = store.config
    dataset = str(cfg.get("dataset"))
    if dataset.startswith("store:"):  # CEs of CEs: name the earlier store by its label
        src = Path(dataset[len("store:"):])
        name = labels.get(str(src.resolve()), src.name.removesuffix(".zarr"))
        return {"method": cfg.get("method"), "dataset": f"CEs of {name}", "split": "-"}
    return {"method": cfg.get("method"), "dataset": dataset, "split": cfg.get("split")}


def evaluate_store(store: CEStore, label: str, classifiers: list[Classifier],
                   info: dict) -> tuple[StoreResult, dict]:
    """Metrics of one store from its (N, K)-sized arrays; also the arrays the figures and the
    comparisons need."""
    lay = store.layout
    n = lay.num_sources
    gen_valid = _rows_mask(store.done(), lay.shard_size, n)
    y, t = store.read_rows("source/y"), store.read_rows("ce/target")
    l2, l0 = store.read_rows("ce/l2"), store.read_rows("ce/l0")
    distances = distance_summary(y, t, l2, l0, gen_valid, num_classes=lay.num_classes,
                                   shard_size=lay.shard_size)
    d = mean_different_class_distance(y, t, l2)
    per_clf, scatter, probs = {}, {}, {}
    for c in classifiers:
        prefix = eval_prefix(c.name)
        valid = gen_valid & _rows_mask(store.done(prefix), lay.shard_size, n)
        sp = store.read_rows(f"{prefix}/source_prob")
        cp = store.read_rows(f"{prefix}/ce_prob")
        s = summarize(y, t, l2, sp, cp, valid, shard_size=lay.shard_size)
        per_clf[c.name] = s
        probs[c.name] = (sp, cp, valid)
        keep = valid & np.isfinite(d)
        yk = y[keep]
        conf = sp[keep][np.arange(len(yk)), yk]
        correct = np.argmax(sp[keep], axis=-1) == yk
        scatter[c.name] = (d[keep], conf, s["proximity_confidence"], correct)
    same = t == y[:, None]
    plots = {"hist": (l2[gen_valid], l0[gen_valid], same[gen_valid]), "scatter": scatter,
             "grid_rows": np.flatnonzero(gen_valid)[:GRID_SOURCES], "probs": probs,
             "arrays": StoreArrays(label, store.identity, store.read_rows("source/index"),
                                     y, t, l2, l0, gen_valid)}
    files = {c.name: {"spec": c.spec or str(c.path), "sha256": c.sha256} for c in classifiers}
    return StoreResult(label, distances, per_clf, str(store.storage),
                       {**info, "classifiers": files}), plots


def comparisons(plots: list[dict], n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """Every pair of stores (paired where their identities allow), and on each store every
    classifier against the reference ("standard" if there is one, else the first)."""
    arrays = [p["arrays"] for p in plots]
    stores = [compare_stores(a, b, n_resamples, seed)
              for i, a in enumerate(arrays) for b in arrays[i + 1:]]
    clfs = []
    for a, p in zip(arrays, plots):
        names = list(p["probs"])
        if len(names) < 2:
            continue
        ref = "standard" if "standard" in names else names[0]
        rows = compare_classifiers(a.y, a.t, a.l2, {n: v[0] for n, v in p["probs"].items()},
                                     {n: v[1] for n, v in p["probs"].items()},
                                     {n: v[2] for n, v in p["probs"].items()}, ref,
                                     n_resamples, seed)
        clfs += [{"store": a.name, **r} for r in rows]
    return {"stores": stores, "classifiers": clfs}


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", label)


def draw_figures(out: Path, stores: list[CEStore], results: list[StoreResult],
                 plots: list[dict]) -> list[str]:
    """figures/*.png; returns their paths relative to `out`, for report.md."""
    fig_dir = out / "figures"
    medians = {r.name: (r.distances["l2"]["different_class"]["q50"],
                        r.distances["l0"]["different_class"]["q50"]) for r in results}
    paths = [plot_distance_histograms(fig_dir / "distance_histograms.png",
                                        {r.name: p["hist"] for r, p in zip(results, plots)},
                                        medians=medians)]
    table = accuracy_table(results)
    if not table.empty:
        paths.append(plot_accuracy_bars(fig_dir / "accuracy_bars.png", table))
    for store, r, p in zip(stores, results, plots):
        tag = _file_label(r.name)
        if p["scatter"]:
            paths.append(plot_confidence_vs_distance(
                fig_dir / f"confidence_vs_distance-{tag}.png",
                {f"{name} ({r.name})": v for name, v in p["scatter"].items()}))
        rows = p["grid_rows"]
        paths.append(plot_ce_grid(
            fig_dir / f"ce_grid-{tag}.png",
            np.asarray(store.array("source/x").oindex[rows]),
            np.asarray(store.array("source/y").oindex[rows]),
            np.asarray(store.array("ce/x").oindex[rows], dtype=np.float32),
            np.asarray(store.array("ce/target").oindex[rows]),
            np.asarray(store.array("ce/l2").oindex[rows]), max_sources=GRID_SOURCES))
    return [str(Path(p).relative_to(out)) for p in paths]


def assemble(out: Path, paths: list[Storage], stores: list[CEStore], labels: list[str],
             classifiers: list[Classifier], figures: bool) -> tuple[list[StoreResult], dict]:
    """One pass over every store: metrics, then summary.json, tables/*.csv, report.md and
    (when `figures`) figures/*.png under `out`. The results, and the written paths by name."""
    by_path = {str(p.resolve()): label for p, label in zip(paths, labels)}
    results, plots = [], []
    for store, label in zip(stores, labels):
        r, p = evaluate_store(store, label, classifiers, _info(store, by_path))
        results.append(r)
        plots.append(p)
    comps = comparisons(plots)
    for r in results:
        r.comparisons = {"stores": [c for c in comps["stores"] if c["a"] == r.name],
                         "classifiers": [c for c in comps["classifiers"] if c["store"] == r.name]}
    drawn = draw_figures(out, stores, results, plots) if figures else []
    return results, write_outputs(out, results, tuple(drawn), Bootstrap(0).settings())
