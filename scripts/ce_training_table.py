"""The clean and PGD test accuracies of classifier checkpoints, with 95% Wilson intervals, as
a markdown table (docs/evaluation.md, "Training with CEs").

    python scripts/ce_training_table.py runs/ce-training/*.pt

Each checkpoint's meta["metrics"] (written at the end of `python -m cejobs.train classifier`)
holds accuracies over n test images; the interval is Wilson's score interval for a binomial
proportion (images counted as independent draws), rounded for display only.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

from cejobs.models.checkpoint import load_checkpoint

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


if __name__ == "__main__":
    main(sys.argv[1:])
