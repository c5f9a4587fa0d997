"""The layout of a store: its dimensions, its arrays and their chunks (docs/store.md).

Every array is chunked by `shard_size` along "source" (and by 1 along "shard"), so shard s
owns exactly one chunk of every array.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ArraySpec:
    dims: tuple[str, ...]  # zarr v3 dimension_names; "source" is the sharded axis
    dtype: str
    fill: Any


def generation_arrays(ce_dtype: str = "float32",
                      extras: dict[str, ArraySpec] | None = None) -> dict[str, ArraySpec]:
    """Array name -> spec for a generation store (shapes come from the plan); `extras` are a
    method's own arrays (cejobs.jobs.methods)."""
    nan = float("nan")
    arrays = {
        "source/x": ArraySpec(("source", "channel", "height", "width"), "float32", nan),
        "source/y": ArraySpec(("source",), "int64", -1),
        "source/index": ArraySpec(("source",), "int64", -1),
        "ce/x": ArraySpec(("source", "ce", "channel", "height", "width"), ce_dtype, nan),
        "ce/target": ArraySpec(("source", "ce"), "int64", -1),
        "ce/l2": ArraySpec(("source", "ce"), "float32", nan),
        "ce/l0": ArraySpec(("source", "ce"), "float32", nan),
        "shard/done": ArraySpec(("shard",), "bool", False),
        "shard/started_at": ArraySpec(("shard",), "float64", nan),  # unix time
        "shard/finished_at": ArraySpec(("shard",), "float64", nan),
        "shard/write_seconds": ArraySpec(("shard",), "float64", nan),
    }
    return {**arrays, **(extras or {})}


def eval_prefix(classifier: str) -> str:
    """The group of one classifier's outputs in a store: `eval/<name>`."""
    return f"eval/{classifier}"


EVAL_ARRAYS = {
    "source_prob": ArraySpec(("source", "class"), "float32", float("nan")),
    "ce_prob": ArraySpec(("source", "ce", "class"), "float32", float("nan")),
    "done": ArraySpec(("shard",), "bool", False),
    "started_at": ArraySpec(("shard",), "float64", float("nan")),  # unix time
    "finished_at": ArraySpec(("shard",), "float64", float("nan")),
    "write_seconds": ArraySpec(("shard",), "float64", float("nan")),
}


def shape_of(spec: ArraySpec, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] for d in spec.dims)


def chunks_of(spec: ArraySpec, sizes: dict[str, int], shard_size: int) -> tuple[int, ...]:
    per_dim = {"source": shard_size, "shard": 1}
    return tuple(per_dim.get(d, sizes[d]) for d in spec.dims)


@dataclass
class Layout:
    """Sizes of every dimension of a store, and its shard size."""

    num_sources: int
    ces_per_source: int
    num_classes: int
    image_shape: tuple[int, int, int]
    shard_size: int

    @property
    def num_shards(self) -> int:
        return -(-self.num_sources // self.shard_size)

    def sizes(self) -> dict[str, int]:
        c, h, w = self.image_shape
        return dict(source=self.num_sources, ce=self.ces_per_source, channel=c, height=h,
                    width=w, shard=self.num_shards, **{"class": self.num_classes})

    def rows(self, shard: int) -> slice:
        start = shard * self.shard_size
        return slice(start, min(start + self.shard_size, self.num_sources))

    def to_attrs(self) -> dict[str, Any]:
        return dict(num_sources=self.num_sources, ces_per_source=self.ces_per_source,
                    num_classes=self.num_classes, image_shape=list(self.image_shape),
                    shard_size=self.shard_size)

    @classmethod
    def from_attrs(cls, a: dict[str, Any]) -> "Layout":
        return cls(a["num_sources"], a["ces_per_source"], a["num_classes"],
                   tuple(a["image_shape"]), a["shard_size"])
