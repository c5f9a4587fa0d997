"""An open CE store: one zarr v3 group on shared storage (public contract: docs/store.md).

The driver creates the group, its arrays and attributes once (cejobs/store/create.py). A shard
writes the rows it owns (exactly one chunk along N of every array), then its `shard/done` flag.
Every read and write of the store's keys goes through its `storage` (cejobs/store/storage.py)
or through zarr on `storage.zarr_store()`: keys are `/`-separated paths below the store's root.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr

from cejobs.errors import StoreError
from cejobs.store.commit import COMMIT
from cejobs.store.format import (ATTRS_KEY, LEFTOVER_AGE_S, OLD_FORMATS, SHARD_FIELDS,
                                 STOP_ERRNOS, STORE_FORMAT, WRITE_CONFIG, write_error)
from cejobs.store.layout import Layout, eval_prefix
from cejobs.store.location import location
from cejobs.store.storage import Storage


@dataclass
class CEStore:
    """An open store: attributes, layout, shard-level reads and writes; its keys through
    `storage`."""

    storage: Storage
    attrs: dict[str, Any]
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)
    damaged_flags: dict[str, list[int]] = field(default_factory=dict, repr=False)

    def __repr__(self) -> str:
        """One short line: where, shards done / total (read now), method."""
        return f"CEStore({self.summary()})"

    def summary(self) -> str:
        """`path: 3/4 shards done, method boltzmann` (done `?` when the flags don't read)."""
        try:
            done = str(int(self.done().sum()))
        except Exception:  # noqa: BLE001 - a repr never raises
            done = "?"
        method = self.attrs.get("config", {}).get("method") or self.attrs.get("kind", "?")
        return f"{self.storage}: {done}/{self.num_shards} shards done, method {method}"

    @classmethod
    def open(cls, where: Storage | str) -> "CEStore":
        """Open the store at `where` (a Storage, or a `--store` value: see `location`)."""
        storage = location(where)
        if storage.kind("zarr.json") == "missing":
            raise StoreError(f"no cejobs store at {storage}")
        try:
            attrs = json.loads(storage.read("zarr.json"))["attributes"][ATTRS_KEY]
            assert isinstance(attrs, dict) and "identity" in attrs and "layout" in attrs
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise StoreError(f"{storage} is not a readable cejobs store: its root metadata "
                             f"{storage}/zarr.json is damaged or not cejobs's; it holds the "
                             f"run's identity, so restore it from a backup") from None
        if attrs.get("format") not in (STORE_FORMAT, *OLD_FORMATS):
            raise StoreError(f"{storage} has store format {attrs.get('format')!r}, "
                             f"expected {STORE_FORMAT}")
        return cls(storage, attrs)

    # ------------------------------------------------------------------ metadata
    @property
    def format(self) -> str:
        return self.attrs["format"]

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
                    self.storage.zarr_store(), path=name, mode="r+"
                ).with_config(WRITE_CONFIG)  # open_array ignores a config argument
            except FileNotFoundError:
                raise StoreError(f"{self.storage} has no array {name!r}") from None
            except Exception as e:  # noqa: BLE001 - a damaged zarr.json fails in many ways
                raise StoreError(f"{self.storage}: the metadata of {name} ({name}/zarr.json) is "
                                 f"damaged ({type(e).__name__}); run python -m cejobs.status "
                                 f"--store {self.storage} --verify to repair it") from None
        return self._arrays[name]

    def forget_arrays(self) -> None:
        """Drop opened arrays (after their metadata was rewritten)."""
        self._arrays.clear()

    def group_attrs(self, prefix: str) -> dict[str, Any] | None:
        """The `cejobs` attributes of the group at `prefix` (e.g. eval/<name>), None if absent
        or unreadable."""
        try:
            doc = json.loads(self.storage.read(f"{prefix}/zarr.json"))
            attrs = doc["attributes"][ATTRS_KEY]
            return attrs if isinstance(attrs, dict) else None
        except (OSError, ValueError, KeyError, TypeError):
            return None

    def classifier_sha256(self, name: str) -> str | None:
        """The sha256 of the checkpoint that wrote `eval/<name>`, or None if there is none."""
        attrs = self.group_attrs(eval_prefix(name))
        return None if attrs is None else attrs.get("sha256")

    def eval_names(self) -> list[str]:
        """Classifiers with a folder `eval/<name>` in this store (a damaged one included)."""
        return sorted(name for name in self.storage.names("eval")
                      if self.storage.kind(f"eval/{name}") == "folder")

    # ------------------------------------------------------------------ shards
    def done(self, prefix: str = "shard") -> np.ndarray:
        """(S,) bool flags, read fresh from disk. A flag chunk that does not read back counts
        as not done and is listed in `damaged_flags[prefix]` (repair rewrites it)."""
        flags, bad = self._read_per_chunk(f"{prefix}/done", False)
        self.damaged_flags[prefix] = bad
        return flags.astype(bool)

    def read_per_shard(self, name: str) -> np.ndarray:
        """A per-shard array (e.g. shard/finished_at); a chunk that does not read is NaN."""
        return self._read_per_chunk(name, np.nan)[0]

    def _read_per_chunk(self, name: str, fill) -> tuple[np.ndarray, list[int]]:
        arr = self.array(name)
        try:
            return np.asarray(arr[:]), []
        except Exception:  # noqa: BLE001 - some chunk is damaged: find which
            out, bad = np.full(arr.shape, fill, dtype=arr.dtype), []
            for s in range(arr.shape[0]):
                try:
                    out[s] = arr[s]
                except Exception:  # noqa: BLE001
                    bad.append(s)
            return out, bad

    def write_shard(self, shard: int, data: dict[str, np.ndarray], prefix: str = "shard",
                    started_at: float | None = None) -> float:
        """Write a shard's rows of every array in `data`, then its done flag.

        Returns the seconds spent writing. The flag is written last, so a shard whose flag is
        set has all its chunks on disk. The whole write is a commit (`COMMIT`): a stop signal
        that arrives during it lets it finish. A write the storage refuses (full disk,
        read-only) raises StoreWriteError.
        """
        with COMMIT:
            try:
                t0 = time.perf_counter()
                rows = self.layout.rows(shard)
                names = list(data) + [f"{prefix}/{n}" for n in SHARD_FIELDS]
                self.remove_leftovers(shard, names)
                if self.storage.folders_block_files:  # a prefix does not block an object
                    for name in names:
                        key = self.chunk_key(name, shard)  # this shard's: a folder is damage
                        if self.storage.kind(key) not in ("file", "missing"):
                            self.storage.remove(key)
                for name, values in data.items():
                    self.array(name)[rows] = values
                write_seconds = time.perf_counter() - t0
                self.array(f"{prefix}/started_at")[shard] = started_at if started_at else np.nan
                self.array(f"{prefix}/write_seconds")[shard] = write_seconds
                self.array(f"{prefix}/finished_at")[shard] = time.time()
                self.array(f"{prefix}/done")[shard] = True
            except OSError as e:
                if e.errno in STOP_ERRNOS:
                    raise write_error(self.storage, e) from None
                raise
        return write_seconds

    def clear_done(self, shards: Iterable[int], prefix: str = "shard") -> None:
        try:
            arr = self.array(f"{prefix}/done")
            for s in shards:
                key = self.chunk_key(f"{prefix}/done", s)
                if self.storage.kind(key) not in ("file", "missing"):
                    self.storage.remove(key)
                arr[s] = False
        except OSError as e:
            raise write_error(self.storage, e) from None

    def read_rows(self, name: str, rows: slice | None = None) -> np.ndarray:
        arr = self.array(name)
        return np.asarray(arr[rows if rows is not None else slice(None)])

    # ------------------------------------------------------------------ chunks
    def chunk_key(self, name: str, shard: int) -> str:
        """The key of shard `shard`'s chunk of array `name` (its index along N is the shard)."""
        arr = self.array(name)
        return f"{name}/{arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))}"

    def chunk_path(self, name: str, shard: int) -> Path:
        """The file of shard `shard`'s chunk of array `name`, for a store in a local folder
        (tests and tools; StoreError on object storage)."""
        return self.storage.local_path(self.chunk_key(name, shard))

    def remove_leftovers(self, shard: int, names: Iterable[str]) -> None:
        """Delete `*.partial` files of this shard's chunks that are older than LEFTOVER_AGE_S
        (left by a writer that died); younger ones may be a live writer's and stay."""
        for name in names:
            key = self.chunk_key(name, shard)
            folder, _, chunk = key.rpartition("/")
            for leftover, age in self.storage.leftovers(folder, f"{chunk}."):
                if age > LEFTOVER_AGE_S:
                    self.storage.remove(leftover)

