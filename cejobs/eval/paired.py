"""Comparisons with intervals: between stores, and between classifiers on one store
(docs/evaluation.md, "Paired comparisons").

The noise of a CE depends only on (seed, CE position) (cejobs.method.noise), so two stores made
with the same seed from the same sources by different methods drive CE k of source i with the
same noise: their difference is measured per CE, and the sources are resampled *jointly* (one
`Bootstrap` for both), which removes the between-source variation from the interval.
- "paired per CE": same dataset, split, seed, source indices and labels, and the same CE
  targets in the same order: per-CE differences.
- "paired per source": the same sources, but other CE layouts (e.g. robust's 1 CE per class
  against 2): sources resampled jointly, statistics of each store's CEs of the drawn sources.
- "unpaired": anything else; each store resampled on its own (independent draws).
Two classifiers on one store always see the same CEs: "paired per CE".
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cejobs.eval.metrics import linear_fit, mean_different_class_distance
from cejobs.eval.intervals import Bootstrap

PAIR_KEYS = ("dataset", "split", "seed")  # identity fields that must agree, besides the sources
PAIRINGS = ("paired per CE", "paired per source", "unpaired")


@dataclass
class StoreArrays:
    """What a comparison needs of one store: identity and (N, ...) arrays, `valid` (N,) the
    sources that count."""

    name: str
    identity: dict
    index: np.ndarray  # source/index: each source's index in its dataset split
    y: np.ndarray
    t: np.ndarray
    l2: np.ndarray
    l0: np.ndarray
    valid: np.ndarray


def pairing(a: StoreArrays, b: StoreArrays) -> str:
    """How two stores can be compared, from their identities and source arrays (PAIRINGS)."""
    if any(a.identity.get(k) != b.identity.get(k) for k in PAIR_KEYS):
        return "unpaired"
    if a.index.shape != b.index.shape or not (np.array_equal(a.index, b.index)
                                              and np.array_equal(a.y, b.y)):
        return "unpaired"
    same_ces = a.t.shape == b.t.shape and np.array_equal(a.t, b.t)
    return "paired per CE" if same_ces else "paired per source"


def _different_class(s: StoreArrays, name: str, rows: np.ndarray) -> np.ndarray:
    a = np.asarray(getattr(s, name), dtype=np.float64)[rows]
    keep = (s.t[rows] != s.y[rows][:, None]) & np.isfinite(a)
    return np.where(keep, a, np.nan)


def _mean_median(v: np.ndarray) -> tuple[float | None, float | None]:
    v = v[np.isfinite(v)]
    return (float(v.mean()), float(np.median(v))) if v.size else (None, None)


def _difference(boot_a: Bootstrap, boot_b: Bootstrap, a: float | None, b: float | None,
                ra: np.ndarray, rb: np.ndarray) -> dict:
    diff = None if a is None or b is None else a - b
    return {"a": boot_a.interval(a, ra), "b": boot_b.interval(b, rb),
            "difference": boot_a.interval(diff, ra - rb)}


def compare_stores(a: StoreArrays, b: StoreArrays, n_resamples: int, seed: int) -> dict:
    """Mean and median L2 and L0 of the different-class CEs of a and b, and a - b, with
    intervals; paired (one joint resample of the common valid sources) when pairing allows."""
    kind = pairing(a, b)
    if kind == "unpaired":
        rows_a, rows_b = np.flatnonzero(a.valid), np.flatnonzero(b.valid)
        boot_a = Bootstrap(len(rows_a), n_resamples, seed)
        boot_b = Bootstrap(len(rows_b), n_resamples, seed, stream=1)
        sources = [len(rows_a), len(rows_b)]
    else:
        rows_a = rows_b = np.flatnonzero(a.valid & b.valid)
        boot_a = boot_b = Bootstrap(len(rows_a), n_resamples, seed)
        sources = len(rows_a)
    out = {"a": a.name, "b": b.name, "pairing": kind, "sources": sources}
    for dist in ("l2", "l0"):
        va, vb = _different_class(a, dist, rows_a), _different_class(b, dist, rows_b)
        (ma, qa), (mb, qb) = boot_a.quantiles(va, [0.5]), boot_b.quantiles(vb, [0.5])
        pa, pb = _mean_median(va), _mean_median(vb)
        out[dist] = {"mean": _difference(boot_a, boot_b, pa[0], pb[0], ma, mb),
                     "median": _difference(boot_a, boot_b, pa[1], pb[1], qa[:, 0], qb[:, 0])}
    return out


def compare_classifiers(y, t, l2, source_prob: dict, ce_prob: dict, valid: dict, reference: str,
                        n_resamples: int, seed: int) -> list[dict]:
    """Each classifier against `reference` on one store's CEs (always paired per CE): probability
    source predicted, different-class CE accuracy and the r^2 of confidence on CE distance,
    their differences (other - reference) with intervals over the sources valid for both."""
    y, t, l2 = np.asarray(y), np.asarray(t), np.asarray(l2)
    out = []
    for name in source_prob:
        if name == reference:
            continue
        rows = np.flatnonzero(valid[name] & valid[reference])
        boot = Bootstrap(len(rows), n_resamples, seed)
        yr, tr = y[rows], t[rows]
        other = ~(tr == yr[:, None])
        d = mean_different_class_distance(yr, tr, l2[rows])
        keep = np.isfinite(d)
        stats, r2 = {}, {}
        for clf in (name, reference):
            ok = np.argmax(source_prob[clf][rows], axis=-1) == yr
            pred = np.argmax(ce_prob[clf][rows], axis=-1)
            sel = other & ok[:, None]
            stats[clf] = {
                "prob_source_predicted": (((pred == yr[:, None]) & sel).sum(1), sel.sum(1)),
                "ce_accuracy_different": (((pred == tr) & other).sum(1), other.sum(1))}
            conf = np.asarray(source_prob[clf], dtype=np.float64)[rows][np.arange(len(rows)), yr]
            r2[clf] = (linear_fit(d[keep], conf[keep])["r2"],
                       boot.fit(d[keep], conf[keep], keep)["r2"])
        row = {"sources": len(rows), "classifier": name, "reference": reference,
               "pairing": "paired per CE"}
        for metric in ("prob_source_predicted", "ce_accuracy_different"):
            (na, da), (nb, db) = stats[name][metric], stats[reference][metric]
            a = float(na.sum() / da.sum()) if da.sum() else None
            b = float(nb.sum() / db.sum()) if db.sum() else None
            row[metric] = _difference(boot, boot, a, b, boot.ratio(na, da), boot.ratio(nb, db))
        row["r2"] = _difference(boot, boot, *r2[name][:1], *r2[reference][:1], r2[name][1],
                                r2[reference][1])
        out.append(row)
    return out
