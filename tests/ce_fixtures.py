"""Small CE stores written straight through the store layer (no sampler), for the readers of
CEs: `CEDataset`, the labelled xarray view, and training with CEs."""

from __future__ import annotations

import numpy as np

from cejobs.data import load_dataset
from cejobs.store.create import create_or_open
from cejobs.store.layout import Layout, generation_arrays
from cejobs.store.store import CEStore

PER_CLASS = 2
LAYOUT = Layout(num_sources=10, ces_per_source=10 * PER_CLASS, num_classes=10,
                image_shape=(1, 8, 8), shard_size=4)  # shards of 4, 4 and 2 sources
DONE = (0, 2)  # shard 1 is left unwritten: its CEs are not the dataset's


def write_ce_store(where, seed: int = 0) -> CEStore:
    """A digits-shaped store whose done shards hold, as CE k of source n, a training digit of
    class k // PER_CLASS (the store's target) with noise, and random distances and labels."""
    rng = np.random.default_rng(seed)
    store = create_or_open(where, {"seed": seed}, LAYOUT, generation_arrays(),
                           {"config": {}, "kind": "generate"})
    digits = load_dataset("digits", split="train")
    k = LAYOUT.ces_per_source
    target = np.repeat(np.arange(LAYOUT.num_classes), PER_CLASS)
    for shard in DONE:
        rows = LAYOUT.rows(shard)
        n = rows.stop - rows.start
        label = rng.integers(0, LAYOUT.num_classes, n)
        pick = np.array([rng.choice(np.flatnonzero(digits.labels == t)) for t in target])
        images = digits.images(pick).numpy()[None] + rng.normal(0, 0.05, (n, k, 1, 8, 8))
        store.write_shard(shard, {
            "source/x": rng.random((n, 1, 8, 8), dtype=np.float32),
            "source/y": label,
            "source/index": rows.start + 100 + np.arange(n),
            "ce/x": np.clip(images, 0, 1).astype(np.float32),
            "ce/target": np.tile(target, (n, 1)),
            "ce/l2": rng.random((n, k), dtype=np.float32) * 3,
            "ce/l0": rng.random((n, k), dtype=np.float32),
        })
    return store
