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
from cejobs.run.layout import EVAL_ARRAYS, ArraySpec, Layout, chunks_of, eval_prefix, shape_of
from cejobs.run.storage import ObjectPath, keys_under, location, publish, zarr_store

STORE_FORMAT = "cejobs-store-v1"
ATTRS_KEY = "cejobs"
_SHARD_FIELDS = ("started_at", "write_seconds", "finished_at", "done")
WRITE_CONFIG = {"write_empty_chunks": True}  # every chunk of a done shard exists on disk


class CommitGuard:
    """Marks the code that commits a shard (its chunks, then its done flag). A stop handler
    asks `active` and lets a commit finish rather than leave the shard half written."""

    def __init__(self) -> None:
        self.depth = 0

    @property
    def active(self) -> bool:
        return self.depth > 0

    def __enter__(self) -> "CommitGuard":
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1


COMMIT = CommitGuard()  # signal handlers run in the main thread, which commits shards


class StoreError(RuntimeError):
    """A store that can't be used as asked; the message is one line."""


def check_writable(path: Path | ObjectPath) -> None:
    """Fail early, in one line, when the store's folder (or bucket) can't be written."""
    if isinstance(path, ObjectPath):
        return path.check_writable()
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
            name, shape=shape_of(spec, sizes), chunks=chunks_of(spec, sizes, layout.shard_size),
            dtype=spec.dtype, fill_value=spec.fill, dimension_names=spec.dims,
            config=WRITE_CONFIG,
        )


def _fill_group(group: zarr.Group, arrays: dict[str, ArraySpec], layout: Layout,
                attrs: dict[str, Any]) -> None:
    _create_arrays(group, arrays, layout)
    group.attrs[ATTRS_KEY] = dict(version=__version__, created=time.time(),
                                  arrays=sorted(arrays), **attrs)


def create_group_atomically(path: Path, arrays: dict[str, ArraySpec], layout: Layout,
                            attrs: dict[str, Any]) -> None:
    """Build a group of `arrays` in a sibling temporary folder, then rename it to `path`, so
    that it exists whole or not at all. When another process got there first, theirs stays.
    On object storage only the group's zarr.json is written here, conditionally (publish)."""
    if isinstance(path, ObjectPath):
        return publish(path, lambda g: _fill_group(g, arrays, layout, attrs), root_only=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
    try:
        _fill_group(zarr.open_group(str(tmp), mode="w-", zarr_format=3), arrays, layout, attrs)
        os.rename(tmp, path)
    except OSError:
        if not (path / "zarr.json").exists():
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


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
    path = location(path)
    if not path.exists():
        check_writable(path)
        meta = dict(format=STORE_FORMAT, identity=identity, layout=layout.to_attrs(), **attrs)
        create_group_atomically(path, arrays, layout, meta)
    store = CEStore.open(path)
    diffs = describe_differences(store.identity, identity)
    diffs += describe_differences(store.layout.to_attrs(), layout.to_attrs())
    if diffs:
        raise StoreError(f"{path} was made with a different configuration; "
                         f"use another --store or the same settings. Differences: "
                         + "; ".join(diffs))
    if isinstance(path, ObjectPath):  # the arrays' metadata, where a creator died before it
        publish(path, lambda g: _create_arrays(g, arrays, layout), root_only=False)
    return store


@dataclass
class CEStore:
    """An open store: attributes, layout, and shard-level reads and writes."""

    path: Path | ObjectPath
    attrs: dict[str, Any]
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path) -> "CEStore":
        path = location(path)
        if not (path / "zarr.json").exists():
            raise StoreError(f"no cejobs store at {path}")
        try:
            group = zarr.open_group(zarr_store(path, read_only=True), mode="r")
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
                    zarr_store(self.path), path=name, mode="r+"
                ).with_config(WRITE_CONFIG)  # open_array ignores a config argument
            except FileNotFoundError:
                raise StoreError(f"{self.path} has no array {name!r}") from None
        return self._arrays[name]

    def classifier_sha256(self, name: str) -> str | None:
        """The sha256 of the checkpoint that wrote `eval/<name>`, or None if there is none."""
        if not (self.path / eval_prefix(name) / "zarr.json").exists():
            return None
        group = zarr.open_group(zarr_store(self.path, read_only=True), path=eval_prefix(name),
                                mode="r")
        return dict(group.attrs).get(ATTRS_KEY, {}).get("sha256")

    # ------------------------------------------------------------------ shards
    def done(self, prefix: str = "shard") -> np.ndarray:
        """(S,) bool flags, read fresh from disk."""
        arr = zarr.open_array(zarr_store(self.path, read_only=True), path=f"{prefix}/done",
                              mode="r")
        return np.asarray(arr[:], dtype=bool)

    def write_shard(self, shard: int, data: dict[str, np.ndarray], prefix: str = "shard",
                    started_at: float | None = None) -> float:
        """Write a shard's rows of every array in `data`, then its done flag.

        Returns the seconds spent writing. The flag is written last, so a shard whose flag is
        set has all its chunks on disk. The whole write is a commit (`COMMIT`): a stop signal
        that arrives during it lets it finish.
        """
        with COMMIT:
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
    def chunk_path(self, name: str, shard: int) -> Path | ObjectPath:
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

    def _leftovers(self) -> dict[int, list[Path]]:
        """shard -> `*.partial` files under its chunks (the chunk index along N is the shard)."""
        out: dict[int, list[Path]] = {}
        for leftover in sorted(self.path.rglob("*.partial")):
            parts = leftover.relative_to(self.path).parts
            if "c" in parts[:-1]:
                out.setdefault(int(parts[parts.index("c") + 1].split(".")[0]), []).append(leftover)
        return out

    # ------------------------------------------------------------------ repair
    def verify(self, decode: bool = True) -> dict[int, list[str]]:
        """Problems of shards: a done shard's missing chunks, or with `decode` its chunks that
        do not decode (every chunk is re-read); and `*.partial` leftovers of any shard.

        Returns {shard: [problem, ...]} for every shard with a problem.
        """
        problems: dict[int, list[str]] = {}
        present = keys_under(self.path)  # one listing, not one request per chunk
        for shard in map(int, np.flatnonzero(self.done())):
            for name in self.attrs["arrays"]:
                chunk = self.chunk_path(name, shard)
                where = chunk.relative_to(self.path)
                if str(where) not in present:
                    problems.setdefault(shard, []).append(f"missing chunk {where}")
                    continue
                if not decode:
                    continue
                try:
                    arr = self.array(name)
                    arr[shard if arr.metadata.dimension_names[0] == "shard"
                        else self.layout.rows(shard)]
                except Exception as e:  # any decode failure means the chunk is damaged
                    problems.setdefault(shard, []).append(
                        f"unreadable chunk {where} ({type(e).__name__})")
        for shard, leftovers in self._leftovers().items():
            problems.setdefault(shard, []).extend(
                f"leftover {p.relative_to(self.path)}" for p in leftovers)
        return problems

    def repair(self, *, decode: bool, writers_may_run: bool) -> "Repair":
        """The one shard-repair policy (generate, status --verify, the SLURM summary job).

        A done shard is damaged when one of its chunks is missing or (with `decode`) does not
        decode, or when a `*.partial` leftover of its chunks is there: a write that died. A
        writer at work leaves the same temporary files, so while writers may run (a
        resubmitted array) leftovers are only reported; the shard's next write removes them.
        Damaged shards lose their done flag, so the next run redoes exactly those.
        """
        problems = self.verify(decode)
        done = self.done()
        damaged = sorted(s for s, items in problems.items() if done[s] and (
            not writers_may_run or any(not i.startswith("leftover") for i in items)))
        self.clear_done(damaged)
        return Repair(problems, damaged)


@dataclass(frozen=True)
class Repair:
    problems: dict[int, list[str]]  # shard -> what was found
    cleared: list[int]  # done shards whose flag was cleared

    def lines(self) -> list[str]:
        return [f"verify: shard {shard}: {item}"
                for shard, items in sorted(self.problems.items()) for item in items]


def create_eval_arrays(store: CEStore, name: str, attrs: dict[str, Any]) -> str:
    """Driver only: create `eval/<name>/` (EVAL_ARRAYS) for one classifier in an existing store,
    atomically; return its prefix. `attrs` hold the classifier's path and sha256; if the group
    exists from another checkpoint, StoreError is raised and nothing changes."""
    prefix = eval_prefix(name)
    final = store.path / prefix
    if not (final / "zarr.json").exists():
        zarr.open_group(zarr_store(store.path), mode="r+").require_group("eval")
        create_group_atomically(final, EVAL_ARRAYS, store.layout, dict(kind="evaluate", **attrs))
    recorded = store.classifier_sha256(name)
    if recorded != attrs.get("sha256"):
        raise StoreError(f"{store.path} has {prefix} from a classifier with sha256 "
                         f"{str(recorded)[:12]}, not {str(attrs.get('sha256'))[:12]}; give "
                         f"this classifier another name")
    if isinstance(final, ObjectPath):  # the arrays' metadata (see create_or_open)
        publish(final, lambda g: _create_arrays(g, EVAL_ARRAYS, store.layout), root_only=False)
    return prefix
