"""A store's CEs as a map-style torch Dataset (`cejobs.CEDataset`), for training and analysis.

    from torch.utils.data import DataLoader
    data = cejobs.CEDataset("runs/demo.zarr", select="different-class")
    for x, target, source_index, source_label, l2, l0 in DataLoader(data, batch_size=64): ...

Item i is one CE of a done shard (docs/store.md): its image `ce/x[n, k]` in [0, 1] (the store
holds CEs in image space) as float32, the class it was guided to `ce/target[n, k]`, its
source's dataset index and label (`source/index[n]`, `source/y[n]`) and its distances
`ce/l2[n, k]`, `ce/l0[n, k]`. `select` keeps the CEs whose target differs from the source's
label ("different-class"), equals it ("same-class"), or all of them.

The per-CE numbers (targets, labels, distances: a few bytes per CE) are read when the dataset
is made, one shard's chunk at a time; images are read when an item asks for them, one shard's
chunk of `ce/x` at a time, and the last chunk read is kept, so items read in store order (or
a sampler that shuffles within shards) read each chunk once. Reads go through `CEStore` and its
`Storage`, so a local folder and an `s3://` URL work the same. The dataset pickles as its
store's location only: each DataLoader worker process opens the store on its first item.
"""

from __future__ import annotations

import os
from typing import Any, Callable, NamedTuple

import numpy as np
import torch
from torch import Tensor

from cejobs.errors import DatasetError
from cejobs.store.location import location
from cejobs.store.storage import Storage
from cejobs.store.store import CEStore

SELECTIONS = ("different-class", "same-class", "all")


class CEItem(NamedTuple):
    """One CE; a DataLoader batch of them is a CEItem of batched tensors."""

    x: Tensor  # (C, H, W) float32 in [0, 1], after `transform`
    target: int  # the class the CE was guided to
    source_index: int  # the source's index in its dataset split
    source_label: int
    l2: float
    l0: float


class CEDataset(torch.utils.data.Dataset):
    """The CEs of the done shards of a store (local folder or object-storage URL); see the
    module doc. `transform` is applied to each image tensor."""

    def __init__(self, store: str | os.PathLike | Storage | CEStore,
                 select: str = "different-class",
                 transform: Callable[[Tensor], Tensor] | None = None):
        if select not in SELECTIONS:
            raise DatasetError(f"select must be one of {', '.join(SELECTIONS)} (got {select!r})")
        opened = store if isinstance(store, CEStore) else CEStore.open(location(store))
        self.where = str(opened.storage)  # what pickles: workers reopen the store from it
        self.select, self.transform = select, transform
        lay = opened.layout
        self.shard_size, self.num_classes = lay.shard_size, lay.num_classes
        self.image_shape = tuple(lay.image_shape)
        parts: dict[str, list[np.ndarray]] = {n: [] for n in
                                              ("row", "ce", "target", "l2", "l0", "index", "y")}
        for shard in np.flatnonzero(opened.done()):
            rows = lay.rows(int(shard))
            target = opened.read_rows("ce/target", rows)  # (n, K)
            label = opened.read_rows("source/y", rows)
            keep = np.ones(target.shape, dtype=bool)
            if select != "all":
                same = target == label[:, None]
                keep = same if select == "same-class" else ~same
            row, ce = np.nonzero(keep)  # row-major: store order
            parts["row"].append(row + rows.start)
            parts["ce"].append(ce)
            parts["target"].append(target[row, ce])
            parts["l2"].append(opened.read_rows("ce/l2", rows)[row, ce])
            parts["l0"].append(opened.read_rows("ce/l0", rows)[row, ce])
            parts["index"].append(opened.read_rows("source/index", rows)[row])
            parts["y"].append(label[row])
        dtypes = dict(row=np.int64, ce=np.int64, target=np.int64, l2=np.float32,
                      l0=np.float32, index=np.int64, y=np.int64)
        cols = {n: np.concatenate(v).astype(dtypes[n]) if v else np.zeros(0, dtypes[n])
                for n, v in parts.items()}
        self.rows, self.ces = cols["row"], cols["ce"]  # the CE's place in the store
        self.targets, self.l2, self.l0 = cols["target"], cols["l2"], cols["l0"]
        self.source_indices, self.source_labels = cols["index"], cols["y"]
        self._store: CEStore | None = None
        self._chunk: tuple[int, np.ndarray] | None = None  # (shard, its ce/x rows)

    def __len__(self) -> int:
        return len(self.targets)

    def __getstate__(self) -> dict[str, Any]:
        """The dataset without its open store or cached chunk (a worker reopens it)."""
        return {**self.__dict__, "_store": None, "_chunk": None}

    def _open(self) -> CEStore:
        if self._store is None:
            self._store = CEStore.open(location(self.where))
        return self._store

    def _shard_images(self, shard: int) -> np.ndarray:
        """Shard `shard`'s chunk of ce/x, (n, K, C, H, W); the last one read is kept."""
        if self._chunk is None or self._chunk[0] != shard:
            store = self._open()
            self._chunk = (shard, store.read_rows("ce/x", store.layout.rows(shard)))
        return self._chunk[1]

    def image(self, i: int) -> Tensor:
        """CE i's image as stored, float32 (C, H, W), without `transform`."""
        row, ce = int(self.rows[i]), int(self.ces[i])
        shard = row // self.shard_size
        pixels = self._shard_images(shard)[row - shard * self.shard_size, ce]
        return torch.from_numpy(np.array(pixels, dtype=np.float32))

    def images(self, indices: np.ndarray) -> Tensor:
        """Images of CEs `indices` as one float32 (B, C, H, W) batch, without `transform`;
        each shard's chunk is read once per call (the shards are visited in order)."""
        indices = np.asarray(indices, dtype=np.int64)
        out = torch.empty((len(indices), *self.image_shape), dtype=torch.float32)
        shards = self.rows[indices] // self.shard_size
        for shard in np.unique(shards):
            at = np.flatnonzero(shards == shard)
            chunk = self._shard_images(int(shard))
            local = self.rows[indices[at]] - int(shard) * self.shard_size
            out[torch.from_numpy(at)] = torch.from_numpy(
                np.asarray(chunk[local, self.ces[indices[at]]], dtype=np.float32))
        return out

    def __getitem__(self, i: int) -> CEItem:
        if not -len(self) <= i < len(self):
            raise IndexError(f"CE {i} of {len(self)}")
        i = int(i) % len(self)
        x = self.image(i)
        if self.transform is not None:
            x = self.transform(x)
        return CEItem(x, int(self.targets[i]), int(self.source_indices[i]),
                      int(self.source_labels[i]), float(self.l2[i]), float(self.l0[i]))

    def __repr__(self) -> str:
        return f"CEDataset({self.where!r}, select={self.select!r}, {len(self)} CEs)"
