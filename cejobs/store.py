"""The CE store: one zarr v3 group on shared storage (public contract: docs/store.md).

The driver creates the group, its arrays and attributes once. A shard writes the rows it owns
(exactly one chunk along N of every array), then its `shard/done` flag. zarr >= 3.1.3 writes a
chunk to `<key>.<uuid>.partial` and renames it into place, so a chunk is whole or absent.
"""

from __future__ import annotations

import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from cejobs import __version__

STORE_FORMAT = "cejobs-store-v1"
ATTRS_KEY = "cejobs"
_SHARD_FIELDS = ("started_at", "write_seconds", "finished_at", "done")
WRITE_CONFIG = {"write_empty_chunks": True}  # every chunk of a done shard exists on disk


class StoreError(RuntimeError):
    """A store that can't be used as asked; the message is one line."""


@dataclass(frozen=True)
class ArraySpec:
    dims: tuple[str, ...]  # zarr v3 dimension_names; "source" is the sharded axis
    dtype: str
    fill: Any


def generation_arrays(ce_dtype: str = "float32", robust: bool = False) -> dict[str, ArraySpec]:
    """Array name -> spec for a generation store (shapes come from the plan)."""
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
    if robust:  # method-specific extras
        arrays["ce/robust_steps"] = ArraySpec(("source", "ce"), "int32", -1)
        arrays["ce/robust_reached"] = ArraySpec(("source", "ce"), "bool", False)
    return arrays


def _shape(spec: ArraySpec, sizes: dict[str, int]) -> tuple[int, ...]:
    return tuple(sizes[d] for d in spec.dims)


def _chunks(spec: ArraySpec, sizes: dict[str, int], shard_size: int) -> tuple[int, ...]:
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


def check_writable(path: Path) -> None:
    """Fail early, in one line, when the store's folder can't be written."""
    parent = path.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        probe = parent / f".cejobs-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e)
        blocker = next((p for p in (parent, *parent.parents) if p.exists() and not p.is_dir()),
                       None)
        if blocker is not None:  # mkdir says only "File exists" or "Not a directory"
            reason = f"{blocker} is a file, not a folder"
        raise StoreError(f"cannot write the store at {path}: {reason} "
                         f"(choose a writable --store on storage every worker shares)") from None


def describe_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(wanted))
    return [f"{k}: store has {recorded.get(k)!r}, this run has {wanted.get(k)!r}"
            for k in keys if recorded.get(k) != wanted.get(k)]


def _create_arrays(group: zarr.Group, arrays: dict[str, ArraySpec], layout: Layout) -> None:
    sizes = layout.sizes()
    for name, spec in arrays.items():
        group.create_array(
            name, shape=_shape(spec, sizes), chunks=_chunks(spec, sizes, layout.shard_size),
            dtype=spec.dtype, fill_value=spec.fill, dimension_names=spec.dims,
            config=WRITE_CONFIG,
        )


def create_or_open(
    path: str | Path,
    identity: dict[str, Any],
    layout: Layout,
    arrays: dict[str, ArraySpec],
    attrs: dict[str, Any],
) -> "CEStore":
    """Create the store, or open an existing one whose identity and layout match.

    Creation is atomic: the group is built in a sibling temporary folder and renamed into
    place, so concurrent drivers (e.g. SLURM array tasks) agree on one store. A mismatch
    raises StoreError naming the differing fields, and nothing on disk changes.
    """
    path = Path(path)
    if not path.exists():
        check_writable(path)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
        try:
            group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
            _create_arrays(group, arrays, layout)
            group.attrs[ATTRS_KEY] = dict(
                format=STORE_FORMAT, version=__version__, created=time.time(),
                identity=identity, layout=layout.to_attrs(), arrays=sorted(arrays), **attrs,
            )
            os.rename(tmp, path)
        except OSError:
            if not path.exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    store = CEStore.open(path)
    diffs = describe_differences(store.identity, identity)
    diffs += describe_differences(store.layout.to_attrs(), layout.to_attrs())
    if diffs:
        raise StoreError(f"{path} was made with a different configuration; "
                         f"use another --store or the same settings. Differences: "
                         + "; ".join(diffs))
    return store


@dataclass
class CEStore:
    """An open store: attributes, layout, and shard-level reads and writes."""

    path: Path
    attrs: dict[str, Any]
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "CEStore":
        path = Path(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"no cejobs store at {path}")
        try:
            group = zarr.open_group(str(path), mode="r")
            attrs = dict(group.attrs)[ATTRS_KEY]
        except Exception:
            raise StoreError(f"{path} is not a cejobs store (no '{ATTRS_KEY}' attributes)") from None
        if attrs.get("format") != STORE_FORMAT:
            raise StoreError(f"{path} has store format {attrs.get('format')!r}, "
                             f"expected {STORE_FORMAT}")
        return cls(path, attrs)

    # ------------------------------------------------------------------ metadata
    @property
    def identity(self) -> dict[str, Any]:
        return self.attrs["identity"]

    @property
    def config(self) -> dict[str, Any]:
        return self.attrs["config"]

    @property
    def layout(self) -> Layout:
        return Layout.from_attrs(self.attrs["layout"])

    @property
    def num_shards(self) -> int:
        return self.layout.num_shards

    def array(self, name: str) -> zarr.Array:
        if name not in self._arrays:
            try:
                self._arrays[name] = zarr.open_array(
                    str(self.path), path=name, mode="r+"
                ).with_config(WRITE_CONFIG)  # open_array ignores a config argument
            except FileNotFoundError:
                raise StoreError(f"{self.path} has no array {name!r}") from None
        return self._arrays[name]

    def has_array(self, name: str) -> bool:
        return (self.path / name / "zarr.json").exists()

    # ------------------------------------------------------------------ shards
    def done(self, prefix: str = "shard") -> np.ndarray:
        """(S,) bool flags, read fresh from disk."""
        arr = zarr.open_array(str(self.path), path=f"{prefix}/done", mode="r")
        return np.asarray(arr[:], dtype=bool)

    def pending_shards(self, prefix: str = "shard") -> list[int]:
        return [int(s) for s in np.flatnonzero(~self.done(prefix))]

    def write_shard(self, shard: int, data: dict[str, np.ndarray], prefix: str = "shard",
                    started_at: float | None = None) -> float:
        """Write a shard's rows of every array in `data`, then its done flag.

        Returns the seconds spent writing. The flag is written last, so a shard whose flag is
        set has all its chunks on disk.
        """
        t0 = time.perf_counter()
        rows = self.layout.rows(shard)
        self.remove_leftovers(shard, list(data) + [f"{prefix}/{n}" for n in _SHARD_FIELDS])
        for name, values in data.items():
            self.array(name)[rows] = values
        write_seconds = time.perf_counter() - t0
        self.array(f"{prefix}/started_at")[shard] = started_at if started_at else np.nan
        self.array(f"{prefix}/write_seconds")[shard] = write_seconds
        self.array(f"{prefix}/finished_at")[shard] = time.time()
        self.array(f"{prefix}/done")[shard] = True
        return write_seconds

    def clear_done(self, shards: Iterable[int], prefix: str = "shard") -> None:
        arr = self.array(f"{prefix}/done")
        for s in shards:
            arr[s] = False

    def read_rows(self, name: str, rows: slice | None = None) -> np.ndarray:
        arr = self.array(name)
        return np.asarray(arr[rows if rows is not None else slice(None)])

    # ------------------------------------------------------------------ checks
    def chunk_path(self, name: str, shard: int) -> Path:
        """Files holding shard `shard`'s chunks of array `name`."""
        arr = self.array(name)  # chunk index along N (or the shard axis) is the shard
        key = arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))
        return self.path / name / key

    def remove_leftovers(self, shard: int, names: Iterable[str]) -> None:
        """Delete `*.partial` files of this shard's chunks (left by a writer that died)."""
        for name in names:
            chunk = self.chunk_path(name, shard)
            for leftover in chunk.parent.glob(f"{chunk.name}.*.partial"):
                leftover.unlink(missing_ok=True)

    def partial_leftovers(self) -> list[Path]:
        return sorted(self.path.rglob("*.partial"))

    def shard_of_partial(self, leftover: Path) -> int | None:
        """The shard a `*.partial` leftover belongs to: chunk index along N is the shard."""
        parts = leftover.relative_to(self.path).parts
        if "c" not in parts[:-1]:
            return None
        return int(parts[parts.index("c") + 1].split(".")[0])

    def verify(self, arrays: Iterable[str] | None = None, prefix: str = "shard") -> dict[int, list[str]]:
        """Problems of done shards: missing or unreadable chunks, and `*.partial` leftovers.

        Returns {shard: [problem, ...]} for every shard with a problem (done or not, for
        leftovers). Re-reads and decodes every chunk of every done shard.
        """
        names = list(arrays) if arrays is not None else list(self.attrs["arrays"])
        problems: dict[int, list[str]] = {}
        done = self.done(prefix)
        for shard in np.flatnonzero(done):
            shard = int(shard)
            for name in names:
                chunk = self.chunk_path(name, shard)
                if not chunk.exists():
                    problems.setdefault(shard, []).append(f"missing chunk {chunk.relative_to(self.path)}")
                    continue
                try:
                    arr = self.array(name)
                    arr[shard if arr.metadata.dimension_names[0] == "shard"
                        else self.layout.rows(shard)]
                except Exception as e:  # any decode failure means the chunk is damaged
                    problems.setdefault(shard, []).append(
                        f"unreadable chunk {chunk.relative_to(self.path)} ({type(e).__name__})")
        for leftover in self.partial_leftovers():
            shard = self.shard_of_partial(leftover)
            if shard is not None:
                problems.setdefault(shard, []).append(
                    f"leftover {leftover.relative_to(self.path)}")
        return problems


def create_eval_arrays(store: CEStore, name: str, attrs: dict[str, Any]) -> str:
    """Driver only: create `eval/<name>/` for one classifier in an existing store; return the
    prefix `eval/<name>` (the `prefix` argument of `done` and `write_shard`).

    Arrays: `source_prob` (N, classes) and `ce_prob` (N, K, classes) float32, chunked by shard,
    plus the per-shard `done`, `started_at`, `write_seconds`, `finished_at` of `write_shard`.
    The group attributes hold `attrs` (classifier path and sha256). The group is built in a
    temporary sibling and renamed into place, so it exists whole or not at all. If it already
    exists with another `sha256`, StoreError is raised and nothing changes.
    """
    nan = float("nan")
    arrays = {
        "source_prob": ArraySpec(("source", "class"), "float32", nan),
        "ce_prob": ArraySpec(("source", "ce", "class"), "float32", nan),
        "done": ArraySpec(("shard",), "bool", False),
        "started_at": ArraySpec(("shard",), "float64", nan),  # unix time
        "finished_at": ArraySpec(("shard",), "float64", nan),
        "write_seconds": ArraySpec(("shard",), "float64", nan),
    }
    prefix = f"eval/{name}"
    final = store.path / prefix
    if not (final / "zarr.json").exists():
        zarr.open_group(str(store.path), mode="r+").require_group("eval")
        tmp = store.path / "eval" / f".{name}.{uuid.uuid4().hex}.creating"
        try:
            group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
            _create_arrays(group, arrays, store.layout)
            group.attrs[ATTRS_KEY] = dict(kind="evaluate", version=__version__,
                                          created=time.time(), arrays=sorted(arrays), **attrs)
            os.rename(tmp, final)
        except OSError:
            if not (final / "zarr.json").exists():
                raise
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    recorded = dict(zarr.open_group(str(store.path), path=prefix, mode="r").attrs)[ATTRS_KEY]
    if recorded.get("sha256") != attrs.get("sha256"):
        raise StoreError(f"{store.path} has {prefix} from a classifier with sha256 "
                         f"{str(recorded.get('sha256'))[:12]} ({recorded.get('path')}), not "
                         f"{str(attrs.get('sha256'))[:12]}; give this classifier another name")
    return prefix
