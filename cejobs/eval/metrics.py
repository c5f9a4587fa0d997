"""Evaluation metrics of a CE store, as pure numpy functions (docs/evaluation.md).

Shapes follow the store contract: N sources, K = classes * per_class CEs per source (in the
order k = target * per_class + replicate), C classes.

- source_y (N,) int, ce_target (N, K) int, ce_l2 / ce_l0 (N, K) float
- source_prob (N, C) and ce_prob (N, K, C): softmax outputs of one classifier
- valid (N,) bool, optional: the sources that count (e.g. shards that are done). None = all.

Every result is a JSON-serialisable dict of plain floats / ints / lists. A value that is
undefined (an empty set of CEs, a fit with zero variance) is None, never NaN. `summarize` and
`distance_summary` report each number as {"value", "low", "high"}: the point estimate and its
bootstrap interval over sources (cejobs.eval.intervals). argmax and argmin
break ties towards the lowest index (numpy's convention).
"""

from __future__ import annotations

import numpy as np

from cejobs.eval.intervals import Bootstrap

QUANTILES = (0.05, 0.25, 0.5, 0.75, 0.95)  # reported with the mean; np.quantile "linear"
GROUPS = ("same_class", "different_class", "all")


def _float(x) -> float | None:
    """A plain float, or None for NaN / inf / missing."""
    if x is None:
        return None
    x = float(x)
    return x if np.isfinite(x) else None


def _fraction(hits: np.ndarray) -> float | None:
    """Mean of a boolean array; None when it is empty."""
    return float(np.mean(hits)) if hits.size else None


def _valid(n: int, valid) -> np.ndarray:
    if valid is None:
        return np.ones(n, dtype=bool)
    valid = np.asarray(valid, dtype=bool)
    if valid.shape != (n,):
        raise ValueError(f"valid mask has shape {valid.shape}, expected ({n},)")
    return valid


def _check(source_y, ce_target, *others) -> tuple[np.ndarray, np.ndarray]:
    y = np.asarray(source_y, dtype=np.int64)
    t = np.asarray(ce_target, dtype=np.int64)
    if y.ndim != 1 or t.ndim != 2 or t.shape[0] != y.shape[0]:
        raise ValueError(f"source_y {y.shape} and ce_target {t.shape} must be (N,) and (N, K)")
    for name, arr, lead in others:
        if np.shape(arr)[: len(lead)] != lead:
            raise ValueError(f"{name} has shape {np.shape(arr)}, expected leading dims {lead}")
    return y, t


def coverage(n: int, valid=None, shard_size: int | None = None) -> dict:
    """How much of a store counts: {"total", "evaluated", and with shard_size: "n_shards",
    "shards" (indices of shards whose rows are all valid)}."""
    v = _valid(n, valid)
    out = {"total": int(n), "evaluated": int(v.sum())}
    if shard_size:
        n_shards = -(-n // shard_size)
        out["n_shards"] = int(n_shards)
        out["shards"] = [s for s in range(n_shards) if v[s * shard_size:(s + 1) * shard_size].all()]
    return out


def clean_accuracy(source_y, source_prob, valid=None) -> float | None:
    """Fraction of sources with argmax f(x) == y."""
    y = np.asarray(source_y)
    v = _valid(len(y), valid)
    return _fraction(np.argmax(np.asarray(source_prob)[v], axis=-1) == y[v])


def ce_accuracy(source_y, ce_target, ce_prob, valid=None) -> dict:
    """Fraction of CEs with argmax f(x_CE) == target, for same-class (target == y) and
    different-class (target != y) CEs separately, with the number of CEs in each."""
    y, t = _check(source_y, ce_target, ("ce_prob", ce_prob, np.shape(ce_target)))
    v = _valid(len(y), valid)
    y, t = y[v], t[v]
    hit = np.argmax(np.asarray(ce_prob)[v], axis=-1) == t
    same = t == y[:, None]
    return {
        "same_class": _fraction(hit[same]),
        "different_class": _fraction(hit[~same]),
        "n_same_class": int(same.sum()),
        "n_different_class": int((~same).sum()),
    }


def prob_source_predicted(source_y, ce_target, source_prob, ce_prob, valid=None) -> dict:
    """Over different-class CEs whose source f classifies correctly, the fraction with
    argmax f(x_CE) == y (the source label). {"value", "n": number of such CEs}."""
    y, t = _check(source_y, ce_target, ("ce_prob", ce_prob, np.shape(ce_target)),
                  ("source_prob", source_prob, np.shape(source_y)))
    v = _valid(len(y), valid)
    y, t = y[v], t[v]
    src_ok = np.argmax(np.asarray(source_prob)[v], axis=-1) == y
    pred = np.argmax(np.asarray(ce_prob)[v], axis=-1)
    sel = (t != y[:, None]) & src_ok[:, None]
    return {"value": _fraction((pred == y[:, None])[sel]), "n": int(sel.sum())}


def mean_different_class_distance(source_y, ce_target, ce_l2) -> np.ndarray:
    """d_i = mean L2 of source i's different-class CEs, (N,) float64; NaN where it has none."""
    y, t = _check(source_y, ce_target, ("ce_l2", ce_l2, np.shape(ce_target)))
    diff = t != y[:, None]
    total = np.where(diff, np.asarray(ce_l2, dtype=np.float64), 0.0).sum(axis=1)
    count = diff.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def linear_fit(x, y) -> dict:
    """Least-squares fit y = slope * x + intercept, with r^2 (closed form, float64).

    Undefined values are None: all of them when n < 2 or x is constant; r^2 alone when y is
    constant (slope 0, a perfect but uninformative fit).
    """
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    out = {"n": int(x.size), "slope": None, "intercept": None, "r2": None}
    if x.size < 2 or np.ptp(x) == 0:
        return out
    if np.ptp(y) == 0:
        return {**out, "slope": 0.0, "intercept": float(y[0])}
    dx, dy = x - x.mean(), y - y.mean()
    sxx, sxy, syy = dx @ dx, dx @ dy, dy @ dy
    slope = sxy / sxx
    out["slope"] = _float(slope)
    out["intercept"] = _float(y.mean() - slope * x.mean())
    out["r2"] = _float(min(1.0, sxy * sxy / (sxx * syy)))
    return out


def quartile_bins(d, correct, conf=None) -> dict:
    """Accuracy of the sources binned by d quartile.

    Edges e = np.quantile(d, [0, .25, .5, .75, 1]); bin j holds e_j <= d < e_{j+1}, the last
    bin also d == e_4. Ties can leave a bin empty: its accuracy is None and its count 0.
    """
    d = np.asarray(d, dtype=np.float64)
    correct = np.asarray(correct, dtype=bool)
    conf = None if conf is None else np.asarray(conf, dtype=np.float64)
    if d.size == 0:
        return {"edges": None, "count": [0] * 4, "accuracy": [None] * 4,
                "mean_confidence": [None] * 4}
    edges = np.quantile(d, [0.0, 0.25, 0.5, 0.75, 1.0])
    b = np.searchsorted(edges[1:4], d, side="right")
    out = {"edges": [float(e) for e in edges], "count": [], "accuracy": [], "mean_confidence": []}
    for j in range(4):
        m = b == j
        out["count"].append(int(m.sum()))
        out["accuracy"].append(_fraction(correct[m]))
        out["mean_confidence"].append(_float(np.mean(conf[m])) if conf is not None and m.any()
                                      else None)
    return out


def proximity_confidence(source_y, ce_target, ce_l2, source_prob, valid=None) -> dict:
    """conf_i = f(x_i)[y_i] against d_i = mean L2 of the different-class CEs of source i:
    the fit of conf on d (linear_fit) and accuracy by d quartile (quartile_bins), over the
    valid sources that have at least one different-class CE."""
    y, t = _check(source_y, ce_target, ("source_prob", source_prob, np.shape(source_y)))
    prob = np.asarray(source_prob, dtype=np.float64)
    d = mean_different_class_distance(y, t, ce_l2)
    keep = _valid(len(y), valid) & np.isfinite(d)
    conf = prob[np.arange(len(y)), y][keep]
    correct = np.argmax(prob, axis=-1)[keep] == y[keep]
    return {**linear_fit(d[keep], conf), "quartiles": quartile_bins(d[keep], correct, conf)}


def _ce_distance_hits(y, t, l2, num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Per source: (its CE-distance prediction is right, it has CEs for every class)."""
    onehot = t[:, :, None] == np.arange(num_classes)  # (n, K, C)
    count = onehot.sum(axis=1)
    total = (onehot * np.asarray(l2, dtype=np.float64)[:, :, None]).sum(axis=1)
    full = (count > 0).all(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        pred = np.argmin(np.where(count > 0, total / np.maximum(count, 1), np.inf), axis=1)
    return full & (pred == y), full


def ce_distance_classifier(source_y, ce_target, ce_l2, num_classes: int, valid=None) -> dict:
    """Predict, for each source with CEs for every class, argmin_c of the mean L2 of its CEs
    with target c (same-class CEs included). {"accuracy", "n": sources with CEs for all
    classes}. Meaningful only for stores made from a test split."""
    y, t = _check(source_y, ce_target, ("ce_l2", ce_l2, np.shape(ce_target)))
    v = _valid(len(y), valid)
    hit, full = _ce_distance_hits(y[v], t[v], np.asarray(ce_l2)[v], num_classes)
    return {"accuracy": _fraction(hit[full]), "n": int(full.sum())}


def quantile_summary(values) -> dict:
    """{"n", "mean", "q05", "q25", "q50", "q75", "q95"} of the finite values; None when empty."""
    x = np.asarray(values, dtype=np.float64).ravel()
    x = x[np.isfinite(x)]
    out = {"n": int(x.size), "mean": _float(x.mean()) if x.size else None}
    qs = np.quantile(x, QUANTILES) if x.size else [None] * len(QUANTILES)
    out.update({f"q{round(q * 100):02d}": _float(v) for q, v in zip(QUANTILES, qs)})
    return out


def _group_values(arr, mask) -> np.ndarray:
    """(n, K) float64 with NaN where a CE is outside the group or not finite."""
    a = np.asarray(arr, dtype=np.float64)
    return np.where(mask & np.isfinite(a), a, np.nan)


def quantile_intervals(values, boot: Bootstrap) -> dict:
    """quantile_summary of the finite values of `values` (n, K), NaN = not counted, each
    statistic as an interval over resampled sources: {"n", "mean": {value, low, high}, ...}."""
    point = quantile_summary(values)
    means, qs = boot.quantiles(values, QUANTILES)
    out = {"n": point["n"], "mean": boot.interval(point["mean"], means)}
    for j, q in enumerate(QUANTILES):
        key = f"q{round(q * 100):02d}"
        out[key] = boot.interval(point[key], qs[:, j])
    return out


def distance_summary(source_y, ce_target, ce_l2, ce_l0, valid=None, *,
                     num_classes: int | None = None, shard_size: int | None = None,
                     boot: Bootstrap | None = None) -> dict:
    """Per-store metrics that need no classifier: L2 and L0 quantiles for same-class,
    different-class and all CEs, and the CE-distance classifier, each with its interval over
    the valid sources (`boot`, default Bootstrap(number of valid sources)). num_classes
    defaults to 1 + the largest label or target seen."""
    y, t = _check(source_y, ce_target, ("ce_l2", ce_l2, np.shape(ce_target)),
                  ("ce_l0", ce_l0, np.shape(ce_target)))
    v = _valid(len(y), valid)
    if num_classes is None:
        num_classes = int(max(y.max(initial=-1), t.max(initial=-1))) + 1
    boot = boot or Bootstrap(int(v.sum()))
    same = t[v] == y[v][:, None]
    masks = {"same_class": same, "different_class": ~same, "all": np.ones_like(same)}
    out = {"sources": coverage(len(y), v, shard_size)}
    for name, arr in (("l2", ce_l2), ("l0", ce_l0)):
        a = np.asarray(arr)[v]
        out[name] = {g: quantile_intervals(_group_values(a, m), boot) for g, m in masks.items()}
    cdc = ce_distance_classifier(y, t, ce_l2, num_classes, v)
    hit, full = _ce_distance_hits(y[v], t[v], np.asarray(ce_l2)[v], num_classes)
    out["ce_distance_classifier"] = {"accuracy": boot.interval(cdc["accuracy"],
                                                               boot.ratio(hit, full)),
                                     "n": cdc["n"]}
    return out


def summarize(source_y, ce_target, ce_l2, source_prob, ce_prob, valid=None, *,
              shard_size: int | None = None, boot: Bootstrap | None = None) -> dict:
    """Every classifier metric for one (store, classifier), as a JSON-serialisable dict:
    sources (coverage), clean_accuracy, ce_accuracy, prob_source_predicted,
    proximity_confidence; each number with its interval over the valid sources (`boot`,
    default Bootstrap(number of valid sources)). The per-store distances are distance_summary's."""
    y, t = _check(source_y, ce_target, ("ce_l2", ce_l2, np.shape(ce_target)),
                  ("source_prob", source_prob, np.shape(source_y)),
                  ("ce_prob", ce_prob, np.shape(ce_target)))
    if np.shape(ce_prob)[-1] != np.shape(source_prob)[-1]:
        raise ValueError(f"ce_prob has {np.shape(ce_prob)[-1]} classes, "
                         f"source_prob {np.shape(source_prob)[-1]}")
    v = _valid(len(y), valid)
    boot = boot or Bootstrap(int(v.sum()))
    yv, tv = y[v], t[v]
    sp, cp = np.asarray(source_prob, dtype=np.float64)[v], np.asarray(ce_prob)[v]
    src_ok = np.argmax(sp, axis=-1) == yv
    hit = np.argmax(cp, axis=-1) == tv
    same = tv == yv[:, None]
    ones = np.ones(len(yv))
    acc = ce_accuracy(y, t, ce_prob, v)
    psp = prob_source_predicted(y, t, source_prob, ce_prob, v)
    sel = ~same & src_ok[:, None]
    said_source = np.argmax(cp, axis=-1) == yv[:, None]
    pc = proximity_confidence(y, t, ce_l2, source_prob, v)
    d = mean_different_class_distance(yv, tv, np.asarray(ce_l2)[v])
    keep = np.isfinite(d)
    conf = sp[np.arange(len(yv)), yv]
    reps = boot.fit(d[keep], conf[keep], keep)
    q = pc["quartiles"]
    if q["edges"] is not None:
        b = np.searchsorted(np.asarray(q["edges"][1:4]), np.where(keep, d, np.inf), side="right")
        in_bin = [(b == j) & keep for j in range(4)]
    else:
        in_bin = [np.zeros(len(yv), dtype=bool)] * 4
    quartiles = {"edges": q["edges"], "count": q["count"],
                 "accuracy": [boot.interval(a, boot.ratio(m & src_ok, m))
                              for a, m in zip(q["accuracy"], in_bin)],
                 "mean_confidence": [boot.interval(c, boot.ratio(np.where(m, conf, 0.0), m))
                                     for c, m in zip(q["mean_confidence"], in_bin)]}
    return {
        "sources": coverage(len(y), v, shard_size),
        "clean_accuracy": boot.interval(clean_accuracy(y, source_prob, v),
                                        boot.ratio(src_ok, ones)),
        "ce_accuracy": {
            "same_class": boot.interval(acc["same_class"],
                                        boot.ratio((hit & same).sum(1), same.sum(1))),
            "different_class": boot.interval(acc["different_class"],
                                             boot.ratio((hit & ~same).sum(1), (~same).sum(1))),
            "n_same_class": acc["n_same_class"], "n_different_class": acc["n_different_class"]},
        "prob_source_predicted": {**boot.interval(psp["value"], boot.ratio(
            (said_source & sel).sum(1), sel.sum(1))), "n": psp["n"]},
        "proximity_confidence": {"n": pc["n"], **{k: boot.interval(pc[k], reps[k]) for k in
                                                  ("slope", "intercept", "r2")},
                                 "quartiles": quartiles},
    }
