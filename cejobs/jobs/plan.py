"""The plan of a run: which sources, which CEs per source, and the shards (docs/design.md §2)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from cejobs.errors import ConfigError
from cejobs.jobs.config import GenerateConfig, parse_index_range


@dataclass(frozen=True)
class Plan:
    source_index: np.ndarray  # (N,) dataset index of each source, in store order
    num_classes: int
    per_class: int
    shard_size: int

    @property
    def num_sources(self) -> int:
        return len(self.source_index)

    @property
    def ces_per_source(self) -> int:
        """K = classes x per_class, ordered k = target * per_class + replicate."""
        return self.num_classes * self.per_class

    @property
    def num_shards(self) -> int:
        return -(-self.num_sources // self.shard_size)

    def shard_rows(self, shard: int) -> slice:
        """Rows [s*shard_size, (s+1)*shard_size) of every array: exactly one chunk along N."""
        if not 0 <= shard < self.num_shards:
            raise IndexError(f"shard {shard} out of range 0..{self.num_shards - 1}")
        start = shard * self.shard_size
        return slice(start, min(start + self.shard_size, self.num_sources))

    def targets(self) -> np.ndarray:
        """(K,) target class of CE k."""
        return np.repeat(np.arange(self.num_classes), self.per_class)

    def replicates(self) -> np.ndarray:
        """(K,) replicate number of CE k within its target class."""
        return np.tile(np.arange(self.per_class), self.num_classes)


def select_sources(config: GenerateConfig, dataset_len: int) -> np.ndarray:
    """Dataset indices of the sources: an index range A:B, or the first N of the split."""
    if config.indices is not None:
        r = parse_index_range(config.indices)
        if r.stop > dataset_len:
            raise ConfigError(
                f"--indices {config.indices} reaches past the {config.split} split "
                f"({dataset_len} samples)"
            )
        return np.arange(r.start, r.stop, dtype=np.int64)
    if config.sources > dataset_len:
        raise ConfigError(
            f"--sources {config.sources} exceeds the {config.split} split ({dataset_len} samples)"
        )
    return np.arange(config.sources, dtype=np.int64)


def make_plan(config: GenerateConfig, dataset_len: int, num_classes: int) -> Plan:
    return Plan(
        source_index=select_sources(config, dataset_len),
        num_classes=num_classes,
        per_class=config.per_class,
        shard_size=config.shard_size,
    )
