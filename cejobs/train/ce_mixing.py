"""CEs mixed into classifier training (`python -m cejobs.train classifier --with-ces STORE`).

Every batch holds a fixed fraction of CEs: of `batch_size` images, `round(fraction *
batch_size)` are CEs and the rest training images (an epoch is one pass over the training
images, so it has more steps than without CEs). The last, shorter batch of an epoch keeps the
same fraction. A step's CEs are drawn without replacement from all CEs of the store's done
shards (`CEDataset(select="all")`), by a generator seeded with (seed, step): a pure function
of the step, so a resumed run draws exactly what an unbroken one would. A CE is labelled with
the class it was guided to (`target`), or with its source's label (`source`: the CE as an
augmentation that must not change the class). The CEs are held in memory, as the training
images are; they then go through the batch's augmentation and, with `--eps`, its PGD attack.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from cejobs.ce_dataset import CEDataset
from cejobs.errors import TrainError

CE_LABELS = ("target", "source")
STEP_SALT = 0xCE  # keeps the CE draws apart from the data order's generator


class CEMix:
    """The CEs of `store`, and which of them go into each training step."""

    def __init__(self, store: str, fraction: float, label: str, seed: int, batch_size: int,
                 image_shape: tuple[int, ...], num_classes: int):
        if label not in CE_LABELS:
            raise TrainError(f"--ce-label must be one of {', '.join(CE_LABELS)} (got {label!r})")
        self.per_batch = round(fraction * batch_size)
        self.real_batch = batch_size - self.per_batch
        if self.per_batch < 1 or self.real_batch < 1:
            raise TrainError(f"--ce-fraction {fraction} of --batch-size {batch_size} leaves no "
                             f"CEs or no training images in a batch")
        data = CEDataset(store, select="all")
        if len(data) == 0:
            raise TrainError(f"{store} has no done shard: no CEs to train on")
        if tuple(data.image_shape) != tuple(image_shape) or data.num_classes != num_classes:
            raise TrainError(f"{store} holds {data.num_classes}-class CEs of shape "
                             f"{tuple(data.image_shape)}, the training data "
                             f"{num_classes}-class images of shape {tuple(image_shape)}")
        self.fraction, self.seed, self.store = fraction, seed, store
        self.images = data.images(np.arange(len(data)))  # each shard's chunk read once
        labels = data.targets if label == "target" else data.source_labels
        self.labels = torch.as_tensor(labels, dtype=torch.int64)

    def __len__(self) -> int:
        return len(self.labels)

    def count(self, real: int) -> int:
        """CEs in a step with `real` training images (the fraction, at least one)."""
        if real == self.real_batch:
            return self.per_batch
        return max(1, round(real * self.fraction / (1 - self.fraction)))

    def add(self, x: Tensor, y: Tensor, step: int) -> tuple[Tensor, Tensor]:
        """Training images `x`, labels `y` of global step `step`, with the step's CEs after
        them."""
        m = self.count(len(y))
        rng = np.random.default_rng([self.seed, STEP_SALT, step])
        pick = torch.from_numpy(rng.choice(len(self), size=m, replace=m > len(self)))
        return torch.cat([x, self.images[pick]]), torch.cat([y, self.labels[pick]])
