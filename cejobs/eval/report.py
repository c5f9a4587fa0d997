"""summary.json, tables/*.csv and report.md from evaluation summaries (docs/evaluation.md).

The input is one `StoreResult` per store:
- `distances`: `metrics.distance_summary(...)` of the store (needs no classifier);
- `classifiers`: classifier name -> `metrics.summarize(...)` of that classifier on the store;
and, in `comparisons`, those of `paired` (this store against later ones, and the classifiers
on this store).
Each summary carries its own "sources" coverage, so a partially evaluated store or classifier
(a `valid` mask) is reported as such. Every metric is an interval {"value", "low", "high"}
(cejobs.eval.intervals); a table has the columns NAME, NAME_low and NAME_high for it, and
report.md prints it as "value [low, high]".
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from cejobs.version import __version__


@dataclass
class StoreResult:
    name: str  # label of the store in tables and figures; unique within one report
    distances: dict  # metrics.distance_summary(...)
    classifiers: dict[str, dict] = field(default_factory=dict)  # name -> metrics.summarize(...)
    path: str = ""  # where the store is, for the record
    # e.g. {"method": "boltzmann", "split": "train", "classifiers": {name: {"spec", "sha256"}}}
    info: dict = field(default_factory=dict)
    # paired.compare_stores of this store (as a) with each later one, and paired.compare_
    # classifiers on this store: {"stores": [...], "classifiers": [...]}
    comparisons: dict = field(default_factory=dict)

    def __repr__(self) -> str:
        """One short line: the label, where, the classifiers."""
        return (f"StoreResult({self.name}: {self.path}, classifiers "
                f"{', '.join(self.classifiers) or 'none'})")


def _ranges(ids: list[int]) -> str:
    """[0, 1, 2, 5, 7, 8] -> '0-2, 5, 7-8'."""
    parts, start = [], None
    for i, s in enumerate(ids):
        if start is None:
            start = s
        if i + 1 == len(ids) or ids[i + 1] != s + 1:
            parts.append(str(start) if start == s else f"{start}-{s}")
            start = None
    return ", ".join(parts)


def coverage_note(sources: dict) -> str | None:
    """'evaluated 120 of 200 sources (shards 0-5 of 10)' for a partial coverage, else None."""
    if sources["evaluated"] == sources["total"]:
        return None
    note = f"evaluated {sources['evaluated']} of {sources['total']} sources"
    if "shards" in sources:
        shards = _ranges(sources["shards"]) or "none"
        note += f" (shards {shards} of {sources['n_shards']})"
    return note


def summary_dict(results: list[StoreResult], intervals: dict | None = None) -> dict:
    """The content of summary.json."""
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"store names must be unique, got {names}")
    return {"cejobs_version": __version__, "intervals": intervals or {},
            "stores": [asdict(r) for r in results]}


def all_comparisons(results: list[StoreResult]) -> dict:
    """The comparisons of every store, gathered: {"stores": [...], "classifiers": [...]}."""
    return {k: [c for r in results for c in r.comparisons.get(k, [])]
            for k in ("stores", "classifiers")}


def _iv(name: str, iv: dict | None) -> dict:
    """An interval as three columns: name, name_low, name_high."""
    iv = iv or {}
    return {name: iv.get("value"), f"{name}_low": iv.get("low"), f"{name}_high": iv.get("high")}


def accuracy_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per (store, classifier): accuracies, probability source predicted, the fit."""
    rows = []
    for r in results:
        for clf, s in r.classifiers.items():
            acc, psp, pc = s["ce_accuracy"], s["prob_source_predicted"], s["proximity_confidence"]
            rows.append({
                "store": r.name, "classifier": clf,
                "sources": s["sources"]["total"], "evaluated": s["sources"]["evaluated"],
                **_iv("clean_accuracy", s["clean_accuracy"]),
                **_iv("ce_accuracy_same", acc["same_class"]),
                **_iv("ce_accuracy_different", acc["different_class"]),
                **_iv("prob_source_predicted", psp),
                **_iv("r2", pc["r2"]), **_iv("slope", pc["slope"]),
                **_iv("intercept", pc["intercept"]),
                "n_same_class": acc["n_same_class"], "n_different_class": acc["n_different_class"],
                "n_prob_source": psp["n"], "n_fit": pc["n"],
            })
    return pd.DataFrame(rows, columns=None if rows else ["store", "classifier"])


def quartile_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per (store, classifier, d quartile): its d range, count, accuracy, confidence."""
    rows = []
    for r in results:
        for clf, s in r.classifiers.items():
            q = s["proximity_confidence"]["quartiles"]
            for j in range(4):
                rows.append({
                    "store": r.name, "classifier": clf, "quartile": j + 1,
                    "d_low": q["edges"][j] if q["edges"] else None,
                    "d_high": q["edges"][j + 1] if q["edges"] else None,
                    "count": q["count"][j], **_iv("accuracy", q["accuracy"][j]),
                    **_iv("mean_confidence", q["mean_confidence"][j]),
                })
    return pd.DataFrame(rows)


def distance_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per (store, distance, CE group) with n, mean and quantiles."""
    rows = []
    for r in results:
        for dist in ("l2", "l0"):
            for group in ("different_class", "same_class", "all"):
                q = r.distances[dist][group]
                row = {"store": r.name, "distance": dist, "ces": group, "n": q["n"]}
                for k, v in q.items():
                    if k != "n":
                        row.update(_iv(k, v))
                rows.append(row)
    return pd.DataFrame(rows)


def ce_distance_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per store: the CE-distance classifier's accuracy and its number of sources."""
    return pd.DataFrame([{"store": r.name, "split": r.info.get("split"),
                          **_iv("accuracy", r.distances["ce_distance_classifier"]["accuracy"]),
                          "n": r.distances["ce_distance_classifier"]["n"]} for r in results])


def store_comparison_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per (pair of stores, distance, statistic): a, b and a - b with intervals."""
    rows = []
    for c in all_comparisons(results)["stores"]:
        for dist in ("l2", "l0"):
            for stat in ("mean", "median"):
                x = c[dist][stat]
                rows.append({"a": c["a"], "b": c["b"], "pairing": c["pairing"],
                             "sources": c["sources"], "distance": dist, "statistic": stat,
                             **_iv("a_value", x["a"]), **_iv("b_value", x["b"]),
                             **_iv("difference", x["difference"])})
    return pd.DataFrame(rows, columns=None if rows else ["a", "b", "pairing"])


def classifier_comparison_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per (store, classifier, metric): classifier, reference and their difference."""
    rows = []
    for c in all_comparisons(results)["classifiers"]:
        for metric in ("prob_source_predicted", "ce_accuracy_different", "r2"):
            x = c[metric]
            rows.append({"store": c["store"], "classifier": c["classifier"],
                         "reference": c["reference"], "pairing": c["pairing"],
                         "sources": c["sources"], "metric": metric,
                         **_iv("classifier_value", x["a"]), **_iv("reference_value", x["b"]),
                         **_iv("difference", x["difference"])})
    return pd.DataFrame(rows, columns=None if rows else ["store", "classifier", "reference"])


def _fmt(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if pct:
        return f"{100 * x:.1f}%"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _markdown(df: pd.DataFrame, pct: tuple[str, ...] = ()) -> str:
    """A markdown table; the columns NAME, NAME_low, NAME_high become one "v [low, high]"."""
    if df.empty:
        return "(none)\n"
    df = df.astype(object).where(pd.notna(df), None)
    cols = [c for c in df.columns if not (c.endswith(("_low", "_high"))
                                          and c.rsplit("_", 1)[0] in df.columns)]
    cells = []
    for _, row in df.iterrows():
        line = []
        for c in cols:
            text = _fmt(row[c], c in pct)
            if f"{c}_low" in df.columns and row[c] is not None:
                lo, hi = _fmt(row[f"{c}_low"], c in pct), _fmt(row[f"{c}_high"], c in pct)
                text += f" [{lo.rstrip('%')}, {hi}]"
            line.append(text)
        cells.append(line)
    lines = ["| " + " | ".join(map(str, cols)) + " |", "|" + "---|" * len(cols)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


_PCT = ("clean_accuracy", "ce_accuracy_same", "ce_accuracy_different", "prob_source_predicted",
        "accuracy", "classifier_value", "reference_value")


def _with_intervals(df: pd.DataFrame, cols: list[str]) -> pd.DataFrame:
    return df[[c for c in df.columns if c in cols or c.rsplit("_", 1)[0] in cols
               and c.endswith(("_low", "_high"))]]


def _intervals_note(intervals: dict) -> str:
    if not intervals:
        return "Brackets: 95% intervals."
    return (f"Brackets: {100 * intervals['level']:g}% {intervals['method']} bootstrap intervals "
            f"over sources ({intervals['n_resamples']} resamples, seed {intervals['seed']}; all "
            f"CEs of a drawn source are drawn with it).")


def _comparison_sections(results: list[StoreResult]) -> list[str]:
    out = ["## Comparisons between stores", "",
           "a - b of the mean and median distance of different-class CEs. **paired per CE**: "
           "same dataset, split, seed and sources, and the same CE targets, so CE k of source i "
           "has the same noise in both stores (it depends only on the seed and the CE); "
           "sources are resampled jointly. **paired per source**: same sources, "
           "other CE layouts. **unpaired**: each store resampled on its own.", "",
           _markdown(store_comparison_table(results)),
           "## Comparisons between classifiers", "",
           "Each classifier minus the reference on the same CEs (paired per CE, sources "
           "resampled jointly).", "",
           _markdown(classifier_comparison_table(results),
                     ("classifier_value", "reference_value", "difference"))]
    return out


def markdown_report(results: list[StoreResult], figures: tuple[str, ...] = (),
                    intervals: dict | None = None) -> str:
    """report.md: every store and classifier, partial coverage, tables with intervals, the
    comparisons, and the figures (paths relative to the output folder)."""
    out = ["# cejobs evaluation report", "", f"cejobs {__version__}. {_intervals_note(intervals)}",
           "", "## Stores", ""]
    for r in results:
        extra = ", ".join(f"{k}={v}" for k, v in r.info.items() if k != "classifiers")
        note = coverage_note(r.distances["sources"]) or f"{r.distances['sources']['total']} sources"
        out.append(f"- **{r.name}**{f' ({extra})' if extra else ''}: `{r.path}`, {note}; "
                   f"classifiers: {', '.join(r.classifiers) or 'none'}")
        for clf, s in r.classifiers.items():
            if coverage_note(s["sources"]):
                out.append(f"  - partial evaluation, {clf}: {coverage_note(s['sources'])}")
        for clf, f in r.info.get("classifiers", {}).items():
            out.append(f"  - classifier {clf}: `{f['spec']}`, sha256 {f['sha256']}")
    acc = accuracy_table(results)
    main = ["store", "classifier", "sources", "clean_accuracy", "ce_accuracy_same",
            "ce_accuracy_different", "prob_source_predicted", "r2", "slope"]
    if not acc.empty:
        acc["sources"] = [str(t) if e == t else f"{e} of {t} (partial)"
                          for e, t in zip(acc["evaluated"], acc["sources"])]
    out += ["", "## Accuracy", "",
            "CE accuracy: argmax f(x_CE) == target. Probability source predicted: different-"
            "class CEs of correctly classified sources predicted as the source label. r2 and "
            "slope: least-squares fit of confidence f(x)[y] on the mean L2 of the source's "
            "different-class CEs.", "",
            _markdown(_with_intervals(acc, main) if not acc.empty else acc, _PCT),
            "## Accuracy by distance quartile", "",
            "Sources binned by the mean L2 of their different-class CEs (quartile 1 = closest); "
            "the intervals hold the edges fixed.",
            "", _markdown(quartile_table(results), _PCT),
            "## CE-distance classifier", "",
            "Predicts the class whose CEs are closest on average; meaningful only for stores "
            "made from a test split.", "", _markdown(ce_distance_table(results), _PCT),
            "## Distance distributions", "", _markdown(distance_table(results))]
    out += _comparison_sections(results)
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})\n" for f in figures]
    return "\n".join(out)


def _value(x):
    return x.get("value") if isinstance(x, dict) else x


def format_table(results: list[StoreResult]) -> str:
    """A short plain-text table for the terminal, one line per (store, classifier); point
    estimates only (report.md has the intervals)."""
    head = ("store", "classifier", "sources", "clean", "CE same", "CE diff", "P(src)", "r2")
    rows = [head]
    for r in results:
        for clf, s in r.classifiers.items():
            src = s["sources"]
            n = str(src["total"]) if src["evaluated"] == src["total"] else \
                f"{src['evaluated']}/{src['total']}*"
            a = s["ce_accuracy"]
            rows.append((r.name, clf, n, _fmt(_value(s["clean_accuracy"]), True),
                         _fmt(_value(a["same_class"]), True),
                         _fmt(_value(a["different_class"]), True),
                         _fmt(_value(s["prob_source_predicted"]), True),
                         _fmt(_value(s["proximity_confidence"]["r2"]))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(head))]
    lines = ["  ".join(c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in
                       enumerate(zip(row, widths))).rstrip() for row in rows]
    if any(row[2].endswith("*") for row in rows[1:]):
        lines.append("* partial evaluation: see report.md")
    return "\n".join(lines)


def tables(results: list[StoreResult]) -> dict[str, pd.DataFrame]:
    """The tables of tables/*.csv, by name."""
    return {"accuracy": accuracy_table(results), "quartiles": quartile_table(results),
            "distances": distance_table(results),
            "ce_distance_classifier": ce_distance_table(results),
            "store_comparisons": store_comparison_table(results),
            "classifier_comparisons": classifier_comparison_table(results)}


def write_outputs(out_dir, results: list[StoreResult], figures: tuple[str, ...] = (),
                  intervals: dict | None = None) -> dict[str, Path]:
    """Write summary.json, tables/{accuracy,quartiles,distances,ce_distance_classifier,
    store_comparisons,classifier_comparisons}.csv and report.md under out_dir; return their
    paths by name."""
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "report": out / "report.md"}
    paths["summary"].write_text(json.dumps(summary_dict(results, intervals), indent=2,
                                           allow_nan=False))
    for name, table in tables(results).items():
        paths[name] = out / "tables" / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    paths["report"].write_text(markdown_report(results, figures, intervals))
    return paths
