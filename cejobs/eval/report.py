"""summary.json, tables/*.csv and report.md from evaluation summaries (docs/evaluation.md).

The input is one `StoreResult` per store:
- `distances`: `metrics.distance_summary(...)` of the store (needs no classifier);
- `classifiers`: classifier name -> `metrics.summarize(...)` of that classifier on the store.
Each summary carries its own "sources" coverage, so a partially evaluated store or classifier
(a `valid` mask) is reported as such.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import pandas as pd

from cejobs import __version__


@dataclass
class StoreResult:
    name: str  # label of the store in tables and figures; unique within one report
    distances: dict  # metrics.distance_summary(...)
    classifiers: dict[str, dict] = field(default_factory=dict)  # name -> metrics.summarize(...)
    path: str = ""  # where the store is, for the record
    info: dict = field(default_factory=dict)  # e.g. {"method": "boltzmann", "split": "train"}


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


def summary_dict(results: list[StoreResult]) -> dict:
    """The content of summary.json."""
    names = [r.name for r in results]
    if len(set(names)) != len(names):
        raise ValueError(f"store names must be unique, got {names}")
    return {"cejobs_version": __version__, "stores": [asdict(r) for r in results]}


def accuracy_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per (store, classifier): accuracies, probability source predicted, the fit."""
    rows = []
    for r in results:
        for clf, s in r.classifiers.items():
            acc, psp, pc = s["ce_accuracy"], s["prob_source_predicted"], s["proximity_confidence"]
            rows.append({
                "store": r.name, "classifier": clf,
                "sources": s["sources"]["total"], "evaluated": s["sources"]["evaluated"],
                "clean_accuracy": s["clean_accuracy"],
                "ce_accuracy_same": acc["same_class"],
                "ce_accuracy_different": acc["different_class"],
                "prob_source_predicted": psp["value"],
                "r2": pc["r2"], "slope": pc["slope"], "intercept": pc["intercept"],
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
                    "count": q["count"][j], "accuracy": q["accuracy"][j],
                    "mean_confidence": q["mean_confidence"][j],
                })
    return pd.DataFrame(rows)


def distance_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per (store, distance, CE group) with n, mean and quantiles."""
    rows = [{"store": r.name, "distance": dist, "ces": group, **r.distances[dist][group]}
            for r in results for dist in ("l2", "l0")
            for group in ("different_class", "same_class", "all")]
    return pd.DataFrame(rows)


def ce_distance_table(results: list[StoreResult]) -> pd.DataFrame:
    """One row per store: the CE-distance classifier's accuracy and its number of sources."""
    return pd.DataFrame([{"store": r.name, "split": r.info.get("split"),
                          **r.distances["ce_distance_classifier"]} for r in results])


def _fmt(x, pct: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    if pct:
        return f"{100 * x:.1f}%"
    return f"{x:.3g}" if isinstance(x, float) else str(x)


def _markdown(df: pd.DataFrame, pct: tuple[str, ...] = ()) -> str:
    if df.empty:
        return "(none)\n"
    cells = [[_fmt(None if pd.isna(v) else v, c in pct) for c, v in row.items()]
             for _, row in df.astype(object).iterrows()]
    lines = ["| " + " | ".join(map(str, df.columns)) + " |", "|" + "---|" * len(df.columns)]
    return "\n".join(lines + ["| " + " | ".join(c) + " |" for c in cells]) + "\n"


_PCT = ("clean_accuracy", "ce_accuracy_same", "ce_accuracy_different", "prob_source_predicted",
        "accuracy")


def markdown_report(results: list[StoreResult], figures: tuple[str, ...] = ()) -> str:
    """report.md: every store and classifier, partial coverage, tables, and the figures
    (paths relative to the output folder)."""
    out = ["# cejobs evaluation report", "", f"cejobs {__version__}.", "", "## Stores", ""]
    for r in results:
        extra = ", ".join(f"{k}={v}" for k, v in r.info.items())
        note = coverage_note(r.distances["sources"]) or f"{r.distances['sources']['total']} sources"
        out.append(f"- **{r.name}**{f' ({extra})' if extra else ''}: `{r.path}`, {note}; "
                   f"classifiers: {', '.join(r.classifiers) or 'none'}")
        for clf, s in r.classifiers.items():
            if coverage_note(s["sources"]):
                out.append(f"  - partial evaluation, {clf}: {coverage_note(s['sources'])}")
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
            _markdown(acc[main] if not acc.empty else acc, _PCT),
            "## Accuracy by distance quartile", "",
            "Sources binned by the mean L2 of their different-class CEs (quartile 1 = closest).",
            "", _markdown(quartile_table(results), _PCT),
            "## CE-distance classifier", "",
            "Predicts the class whose CEs are closest on average; meaningful only for stores "
            "made from a test split.", "", _markdown(ce_distance_table(results), _PCT),
            "## Distance distributions", "", _markdown(distance_table(results))]
    if figures:
        out += ["## Figures", ""] + [f"![{Path(f).stem}]({f})\n" for f in figures]
    return "\n".join(out)


def format_table(results: list[StoreResult]) -> str:
    """A short plain-text table for the terminal, one line per (store, classifier)."""
    head = ("store", "classifier", "sources", "clean", "CE same", "CE diff", "P(src)", "r2")
    rows = [head]
    for r in results:
        for clf, s in r.classifiers.items():
            src = s["sources"]
            n = str(src["total"]) if src["evaluated"] == src["total"] else \
                f"{src['evaluated']}/{src['total']}*"
            a = s["ce_accuracy"]
            rows.append((r.name, clf, n, _fmt(s["clean_accuracy"], True),
                         _fmt(a["same_class"], True), _fmt(a["different_class"], True),
                         _fmt(s["prob_source_predicted"]["value"], True),
                         _fmt(s["proximity_confidence"]["r2"])))
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
            "ce_distance_classifier": ce_distance_table(results)}


def write_outputs(out_dir, results: list[StoreResult],
                  figures: tuple[str, ...] = ()) -> dict[str, Path]:
    """Write summary.json, tables/{accuracy,quartiles,distances,ce_distance_classifier}.csv
    and report.md under out_dir; return their paths by name."""
    out = Path(out_dir)
    (out / "tables").mkdir(parents=True, exist_ok=True)
    paths = {"summary": out / "summary.json", "report": out / "report.md"}
    paths["summary"].write_text(json.dumps(summary_dict(results), indent=2, allow_nan=False))
    for name, table in tables(results).items():
        paths[name] = out / "tables" / f"{name}.csv"
        table.to_csv(paths[name], index=False)
    paths["report"].write_text(markdown_report(results, figures))
    return paths
