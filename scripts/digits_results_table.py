"""The table of docs/evaluation.md "Digits results", printed as markdown from a summary.json.

    python scripts/digits_results_table.py runs/digits-results/eval/summary.json

One row per (store, classifier). The store's own cells (method, sources, medians of the
different-class CE distances, CE-distance classifier) are on its first row only. Every number
is read from summary.json and only rounded for display.
"""

from __future__ import annotations

import json
import sys


def pct(x) -> str:
    return "n/a" if x is None else f"{100 * x:.1f}"


def num(x, digits: int) -> str:
    return "n/a" if x is None else f"{x:.{digits}f}"


def table(summary: dict) -> str:
    head = ["store (method; sources)", "L2 median", "L0 median", "CE-distance clf. acc. %",
            "classifier", "clean acc. %", "CE acc. same-class %", "CE acc. diff.-class %",
            "P(source predicted) %", "r^2 (conf. vs mean CE L2)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
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
            num(l2["q50"], 2), num(l0["q50"], 3),
            f"{pct(cdc['accuracy'])} (n={cdc['n']})",
        ]
        for i, (clf, c) in enumerate(s["classifiers"].items()):
            acc, pc = c["ce_accuracy"], c["proximity_confidence"]
            cells = (store_cells if i == 0 else [""] * len(store_cells)) + [
                clf, pct(c["clean_accuracy"]), pct(acc["same_class"]),
                pct(acc["different_class"]), pct(c["prob_source_predicted"]["value"]),
                num(pc["r2"], 2),
            ]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print(__doc__.strip(), file=sys.stderr)
        return 2
    with open(argv[0]) as f:
        print(table(json.load(f)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
