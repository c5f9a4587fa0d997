"""The clean and PGD test accuracies of classifier checkpoints, with 95% Wilson intervals, as
a markdown table (docs/evaluation.md, "Training with CEs").

    python scripts/ce_training_table.py runs/ce-training/*.pt
    python scripts/ce_training_table.py --paired STORE A=B [C=D ...]

Each checkpoint's meta["metrics"] (written at the end of `python -m cejobs.train classifier`)
holds accuracies over n test images; the interval is Wilson's score interval for a binomial
proportion (images counted as independent draws), rounded for display only.
With `--paired`, classifier A against classifier B on the evaluated CEs of STORE (both
`eval/A` and `eval/B` written by `python -m cejobs.evaluate`): different-class CE accuracy and
probability source predicted, A - B paired per CE, with the evaluation's own bootstrap over
sources (cejobs.eval.paired.compare_classifiers, as evaluate compares each with `standard`).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

from cejobs.eval.intervals import N_RESAMPLES, SEED
from cejobs.eval.paired import compare_classifiers
from cejobs.models.checkpoint import load_checkpoint
from cejobs.store.store import CEStore

Z = 1.959964  # the normal 97.5% quantile


def wilson(p: float, n: int) -> tuple[float, float]:
    centre = (p + Z * Z / (2 * n)) / (1 + Z * Z / n)
    half = Z * math.sqrt(p * (1 - p) / n + Z * Z / (4 * n * n)) / (1 + Z * Z / n)
    return centre - half, centre + half


def cell(p: float, n: int) -> str:
    low, high = wilson(p, n)
    return f"{100 * p:.1f} [{100 * low:.1f}, {100 * high:.1f}]"


def main(paths: list[str]) -> None:
    rows, head = [], None
    for path in paths:
        meta = load_checkpoint(path).meta
        m, train = meta["metrics"], meta["train"]
        attacks = [f"PGD-{a['steps']} at {a['eps']:g}" for a in m["attacks"]]
        head = head or ["model", "eps", "CEs mixed in", f"clean (n={m['n']})", *attacks]
        ces = (f"{train['ce_fraction']:g} of each batch, labelled {train['ce_label']}"
               if train.get("with_ces") else "none")
        rows.append([Path(path).stem, f"{meta['eps']:g}", ces, cell(m["clean_acc"], m["n"]),
                     *(cell(a["acc"], m["n"]) for a in m["attacks"])])
    print("| " + " | ".join(head) + " |")
    print("|" + "---|" * len(head))
    for row in rows:
        print("| " + " | ".join(row) + " |")


def interval(iv: dict) -> str:
    return f"{100 * iv['value']:.1f} [{100 * iv['low']:.1f}, {100 * iv['high']:.1f}]"


def paired(store_path: str, pairs: list[str]) -> None:
    store = CEStore.open(store_path)
    lay = store.layout

    def per_source(flags: np.ndarray) -> np.ndarray:
        return np.repeat(flags, lay.shard_size)[:lay.num_sources]

    y, t, l2 = (store.read_rows(n) for n in ("source/y", "ce/target", "ce/l2"))
    print("| A - B | sources | CE acc. diff.-class %: A; B | A - B (points) "
          "| P(source predicted) %: A; B | A - B (points) |")
    print("|---|---|---|---|---|---|")
    for pair in pairs:
        a, b = pair.split("=")
        valid = {n: per_source(store.done()) & per_source(store.done(f"eval/{n}")) for n in (a, b)}
        probs = {n: (store.read_rows(f"eval/{n}/source_prob"), store.read_rows(f"eval/{n}/ce_prob"))
                 for n in (a, b)}
        row = compare_classifiers(y, t, l2, {n: p[0] for n, p in probs.items()},
                                  {n: p[1] for n, p in probs.items()}, valid, b,
                                  N_RESAMPLES, SEED)[0]
        acc, src = row["ce_accuracy_different"], row["prob_source_predicted"]
        print(f"| {a} - {b} | {row['sources']} | {interval(acc['a'])}; {interval(acc['b'])} | "
              f"{interval(acc['difference'])} | {interval(src['a'])}; {interval(src['b'])} | "
              f"{interval(src['difference'])} |")


if __name__ == "__main__":
    if sys.argv[1:2] == ["--paired"]:
        paired(sys.argv[2], sys.argv[3:])
    else:
        main(sys.argv[1:])
