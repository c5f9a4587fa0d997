"""The tables of docs/evaluation.md "Digits results", printed as markdown from a summary.json.

    python scripts/digits_results_table.py runs/digits-results/eval/summary.json

Three tables, every number "value [low, high]" with its bootstrap interval over sources
(summary.json "intervals" says which):
1. one row per (store, classifier); the store's own cells (method, sources, medians of the
   different-class CE distances, CE-distance classifier) on its first row only;
2. the comparisons between stores: a - b of the mean and median different-class L2 and L0,
   with the pairing (paired per CE, paired per source, or unpaired) that the stores'
   identities allow;
3. each classifier against the standard one on the same CEs (paired per CE): probability
   source predicted, different-class CE accuracy and r^2, and their differences.
Every number is read from summary.json and only rounded for display. A bad file: one line on
stderr, exit status 2.
"""

from __future__ import annotations

import json
import sys


def _comparisons(summary: dict, kind: str) -> list[dict]:
    """The comparisons ("stores" or "classifiers") of every store in summary.json."""
    return [c for s in summary["stores"] for c in s.get("comparisons", {}).get(kind, [])]


def ci(iv: dict | None, digits: int = 2, pct: bool = False) -> str:
    """'v [low, high]' of an interval {"value", "low", "high"}; values * 100 when pct."""
    if iv is None or iv.get("value") is None:
        return "n/a"
    scale = 100 if pct else 1
    digits = 1 if pct else digits
    f = lambda v: "?" if v is None else f"{scale * v:.{digits}f}"
    return f"{f(iv['value'])} [{f(iv['low'])}, {f(iv['high'])}]"


def _table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def store_table(summary: dict) -> str:
    head = ["store (method; sources)", "L2 median", "L0 median", "CE-distance clf. acc. %",
            "classifier", "clean acc. %", "CE acc. same-class %", "CE acc. diff.-class %",
            "P(source predicted) %", "r^2 (conf. vs mean CE L2)"]
    rows = []
    for s in summary["stores"]:
        dist = s["distances"]
        l2, l0 = dist["l2"]["different_class"], dist["l0"]["different_class"]
        cdc = dist["ce_distance_classifier"]
        info = s.get("info", {})
        what = info.get("method", "?")
        if str(info.get("dataset", "")).startswith("CEs of"):
            what += f", {info['dataset']}"
        store_cells = [
            f"**{s['name']}** ({what}; {dist['sources']['evaluated']} sources, "
            f"{l2['n']} diff.-class CEs)",
            ci(l2["q50"], 2), ci(l0["q50"], 3), f"{ci(cdc['accuracy'], pct=True)} (n={cdc['n']})",
        ]
        for i, (clf, c) in enumerate(s["classifiers"].items()):
            acc, pc = c["ce_accuracy"], c["proximity_confidence"]
            rows.append((store_cells if i == 0 else [""] * len(store_cells)) + [
                clf, ci(c["clean_accuracy"], pct=True), ci(acc["same_class"], pct=True),
                ci(acc["different_class"], pct=True),
                ci(c["prob_source_predicted"], pct=True), ci(pc["r2"], 2)])
    return _table(head, rows)


def store_comparison_table(summary: dict) -> str:
    head = ["a - b", "pairing (sources)", "mean L2: a, b", "a - b", "median L2 a - b",
            "median L0 a - b"]
    rows = []
    for c in _comparisons(summary, "stores"):
        m = c["l2"]["mean"]
        rows.append([f"{c['a']} - {c['b']}", f"{c['pairing']} ({c['sources']})",
                     f"{ci(m['a'])}; {ci(m['b'])}", ci(m["difference"]),
                     ci(c["l2"]["median"]["difference"]),
                     ci(c["l0"]["median"]["difference"], 3)])
    return _table(head, rows)


def classifier_comparison_table(summary: dict) -> str:
    head = ["store", "classifier - reference", "P(source) %: classifier, reference",
            "difference (points)", "CE acc. diff.-class difference (points)",
            "r^2: classifier, reference", "r^2 difference"]
    rows = []
    for c in _comparisons(summary, "classifiers"):
        p = c["prob_source_predicted"]
        rows.append([c["store"], f"{c['classifier']} - {c['reference']} ({c['pairing']})",
                     f"{ci(p['a'], pct=True)}; {ci(p['b'], pct=True)}",
                     ci(p["difference"], pct=True),
                     ci(c["ce_accuracy_different"]["difference"], pct=True),
                     f"{ci(c['r2']['a'])}; {ci(c['r2']['b'])}", ci(c["r2"]["difference"])])
    return _table(head, rows)


def tables(summary: dict) -> str:
    iv = summary["intervals"]
    note = (f"Brackets: {100 * iv['level']:g}% {iv['method']} bootstrap intervals over sources "
            f"({iv['n_resamples']} resamples, seed {iv['seed']}).")
    return "\n\n".join([note, store_table(summary), store_comparison_table(summary),
                        classifier_comparison_table(summary)])


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    try:
        with open(argv[0]) as f:
            text = tables(json.load(f))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        print(f"digits_results_table: {argv[0]}: not a cejobs summary.json with intervals "
              f"({exc!r})", file=sys.stderr)
        return 2
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
