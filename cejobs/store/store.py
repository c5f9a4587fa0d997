"""The CE store: one zarr v3 group on shared storage (public contract: docs/store.md).

The driver creates the group, its arrays and attributes once. A shard writes the rows it owns
(exactly one chunk along N of every array), then its `shard/done` flag. zarr >= 3.1.3 writes a
chunk to `<key>.<uuid>.partial` and renames it into place, so a chunk is whole or absent, and
every chunk ends with a crc32c checksum (cejobs-store-v2), so a changed byte is detected.

All file-system access of a store goes through `CEStore`'s key methods (`key_kind`,
`read_key`, `write_key`, `create_key`, `move_key`, `remove_key`, `touch_key`, `key_age`,
`leftovers`) and zarr: keys are `/`-separated paths below the store's root.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import zarr
from zarr.codecs import Crc32cCodec, ZstdCodec

from cejobs.version import __version__
from cejobs.store.layout import EVAL_ARRAYS, ArraySpec, Layout, chunks_of, eval_prefix, shape_of
from cejobs.store.storage import (ObjectKeys, ObjectPath, group_files, location, write_missing,
                                zarr_store)

from cejobs.errors import StoreError, StoreWriteError

STORE_FORMAT = "cejobs-store-v2"  # v2: crc32c on every chunk, metadata copies, sources_sha256
OLD_FORMATS = ("cejobs-store-v1",)  # still opened: status, verify (decode only), evaluate
V2_IDENTITY = ("sources_sha256",)  # identity fields a v1 store did not record
ATTRS_KEY = "cejobs"
_SHARD_FIELDS = ("started_at", "write_seconds", "finished_at", "done")
WRITE_CONFIG = {"write_empty_chunks": True}  # every chunk of a done shard exists on disk
# zstd, then a crc32c of the compressed bytes: any changed byte fails the read
# (cost on a CIFAR-sized shard: docs/performance.md, "Checksums")
COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())
LEFTOVER_AGE_S = 600.0  # a `*.partial` younger than this may be a live writer's: kept
STOP_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


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






def write_error(path: Path | str, e: OSError) -> StoreWriteError:
    reason = e.strerror or str(e)
    return StoreWriteError(f"cannot write the store at {path}: {reason} (finished shards stay "
                           f"done; fix the storage, then run the same command to resume)")


def check_writable(path: Path | ObjectPath) -> None:
    """Fail early, in one line, when the store's folder (an existing store: the store itself)
    can't be written; on object storage, when the endpoint, bucket or credentials fail."""
    if isinstance(path, ObjectPath):
        return path.check_writable()
    folder = path if path.is_dir() else path.resolve().parent
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = folder / f".cejobs-write-test-{uuid.uuid4().hex}"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        reason = e.strerror or str(e)
        blocker = next((p for p in (folder, *folder.parents) if p.exists() and not p.is_dir()),
                       None)
        if blocker is not None:  # mkdir says only "File exists" or "Not a directory"
            reason = f"{blocker} is a file, not a folder"
        raise StoreError(f"cannot write the store at {path}: {reason} "
                         f"(choose a writable --store on storage every worker shares)") from None


def describe_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(wanted))
    return [f"{k}: store has {recorded.get(k)!r}, this run has {wanted.get(k)!r}"
            for k in keys if recorded.get(k) != wanted.get(k)]


def create_arrays(group: zarr.Group, arrays: dict[str, ArraySpec], layout: Layout) -> None:
    """Create every array of `arrays` in `group`, shaped and chunked for `layout`."""
    sizes = layout.sizes()
    for name, spec in arrays.items():
        group.create_array(
            name, shape=shape_of(spec, sizes), chunks=chunks_of(spec, sizes, layout.shard_size),
            dtype=spec.dtype, fill_value=spec.fill, dimension_names=spec.dims,
            compressors=COMPRESSORS, config=WRITE_CONFIG,
        )


def group_objects(arrays: dict[str, ArraySpec], layout: Layout,
                  attrs: dict[str, Any]) -> dict[str, bytes]:
    """A new group's metadata objects, made in memory: every node's zarr.json, the root's with
    the attributes and their copy of the others (object storage's create_group_atomically)."""
    files = group_files(lambda group: create_arrays(group, arrays, layout))
    meta = {key.rpartition("/")[0]: json.loads(data) for key, data in files.items()
            if key.endswith("/zarr.json")}  # arrays and subgroups
    root = dict(version=__version__, created=time.time(), arrays=sorted(arrays), metadata=meta,
                **attrs)
    files["zarr.json"] = group_files(
        lambda group: group.attrs.update({ATTRS_KEY: root}))["zarr.json"]
    return files


def create_group_atomically(path: Path | ObjectPath, arrays: dict[str, ArraySpec],
                            layout: Layout, attrs: dict[str, Any]) -> bool | None:
    """Build a group of `arrays` in a sibling temporary folder, then rename it to `path`, so
    that it exists whole or not at all. When another process got there first, theirs stays.
    The group's attributes keep a copy of every array's metadata (`metadata`), from which
    `status --verify` rewrites a damaged `zarr.json`.

    On object storage only the root zarr.json is written here, with a conditional PUT, and
    whether this call wrote it is returned; the other nodes' metadata follows once the
    caller has checked that the store is its own (create_or_open, write_missing)."""
    if isinstance(path, ObjectPath):
        try:
            return (path / "zarr.json").create(group_objects(arrays, layout, attrs)["zarr.json"])
        except OSError as e:
            raise write_error(path, e) from None
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.creating")
    try:
        group = zarr.open_group(str(tmp), mode="w-", zarr_format=3)
        create_arrays(group, arrays, layout)
        meta = {p.parent.relative_to(tmp).as_posix(): json.loads(p.read_text())
                for p in tmp.rglob("zarr.json") if p.parent != tmp}  # arrays and subgroups
        group.attrs[ATTRS_KEY] = dict(version=__version__, created=time.time(),
                                      arrays=sorted(arrays), metadata=meta, **attrs)
        os.rename(tmp, path)
    except OSError as e:
        if not (path / "zarr.json").exists():
            raise write_error(path, e) from None
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
    raises StoreError naming the differing fields, and nothing on disk changes. A v1 store
    (no dataset hash) is compared on the fields it recorded.
    """
    path = location(path)
    if isinstance(path, Path) and path.is_symlink() and not path.exists():
        raise StoreError(f"--store {path} is a symbolic link to {os.readlink(path)}, which does "
                         f"not exist; create its target or choose another --store")
    if isinstance(path, Path) and path.exists() and not path.is_dir():
        raise StoreError(f"--store {path} is a file, not a store folder; choose another --store")
    check_writable(path)  # a new store's folder, or the existing store itself
    if not path.exists():
        meta = dict(format=STORE_FORMAT, identity=identity, layout=layout.to_attrs(), **attrs)
        create_group_atomically(path, arrays, layout, meta)
    store = CEStore.open(path)
    if store.format in OLD_FORMATS:
        identity = {k: v for k, v in identity.items() if k not in V2_IDENTITY}
    diffs = describe_differences(store.identity, identity)
    diffs += describe_differences(store.layout.to_attrs(), layout.to_attrs())
    if diffs:
        raise StoreError(f"{path} was made with a different configuration; "
                         f"use another --store or the same settings. Differences: "
                         + "; ".join(diffs))
    if isinstance(path, ObjectPath):  # the nodes' metadata, also where a creator died early
        write_missing(path, {k: v for k, v in group_objects(arrays, layout, {}).items()
                             if k != "zarr.json"})
    return store


@dataclass
class CEStore:
    """An open store: attributes, layout, shard-level reads and writes, and key I/O."""

    path: Path | ObjectPath
    attrs: dict[str, Any]
    _arrays: dict[str, zarr.Array] = field(default_factory=dict, repr=False)
    damaged_flags: dict[str, list[int]] = field(default_factory=dict, repr=False)

    @classmethod
    def open(cls, path: str | Path | ObjectPath) -> "CEStore":
        path = location(path)
        store = (ObjectCEStore if isinstance(path, ObjectPath) else cls)(path, {})
        kind = store.key_kind("zarr.json")
        if kind == "missing":
            raise StoreError(f"no cejobs store at {path}")
        try:
            attrs = json.loads(store.read_key("zarr.json"))["attributes"][ATTRS_KEY]
            assert isinstance(attrs, dict) and "identity" in attrs and "layout" in attrs
        except (OSError, ValueError, KeyError, TypeError, AssertionError):
            raise StoreError(f"{path} is not a readable cejobs store: its root metadata "
                             f"{path / 'zarr.json'} is damaged or not cejobs's; it holds the "
                             f"run's identity, so restore it from a backup") from None
        if attrs.get("format") not in (STORE_FORMAT, *OLD_FORMATS):
            raise StoreError(f"{path} has store format {attrs.get('format')!r}, "
                             f"expected {STORE_FORMAT}")
        store.attrs = attrs
        return store

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
                    zarr_store(self.path), path=name, mode="r+"
                ).with_config(WRITE_CONFIG)  # open_array ignores a config argument
            except FileNotFoundError:
                raise StoreError(f"{self.path} has no array {name!r}") from None
            except Exception as e:  # noqa: BLE001 - a damaged zarr.json fails in many ways
                raise StoreError(f"{self.path}: the metadata of {name} ({name}/zarr.json) is "
                                 f"damaged ({type(e).__name__}); run python -m cejobs.status "
                                 f"--store {self.path} --verify to repair it") from None
        return self._arrays[name]

    def forget_arrays(self) -> None:
        """Drop opened arrays (after their metadata was rewritten)."""
        self._arrays.clear()

    def group_attrs(self, prefix: str) -> dict[str, Any] | None:
        """The `cejobs` attributes of the group at `prefix` (e.g. eval/<name>), None if absent
        or unreadable."""
        try:
            doc = json.loads(self.read_key(f"{prefix}/zarr.json"))
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
        return sorted(name for name in self.list_folder("eval")
                      if self.key_kind(f"eval/{name}") == "folder")

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
                self.remove_leftovers(shard, list(data) + [f"{prefix}/{n}" for n in _SHARD_FIELDS])
                for name in self.folder_checked(list(data) + [f"{prefix}/{n}"
                                                              for n in _SHARD_FIELDS]):
                    key = self.chunk_key(name, shard)  # this shard's: a folder there is damage
                    if self.key_kind(key) not in ("file", "missing"):
                        self.remove_key(key)
                for name, values in data.items():
                    self.array(name)[rows] = values
                write_seconds = time.perf_counter() - t0
                self.array(f"{prefix}/started_at")[shard] = started_at if started_at else np.nan
                self.array(f"{prefix}/write_seconds")[shard] = write_seconds
                self.array(f"{prefix}/finished_at")[shard] = time.time()
                self.array(f"{prefix}/done")[shard] = True
            except OSError as e:
                if e.errno in STOP_ERRNOS:
                    raise write_error(self.path, e) from None
                raise
        return write_seconds

    def clear_done(self, shards: Iterable[int], prefix: str = "shard") -> None:
        try:
            arr = self.array(f"{prefix}/done")
            for s in shards:
                key = self.chunk_key(f"{prefix}/done", s)
                if self.key_kind(key) not in ("file", "missing"):
                    self.remove_key(key)
                arr[s] = False
        except OSError as e:
            raise write_error(self.path, e) from None

    def read_rows(self, name: str, rows: slice | None = None) -> np.ndarray:
        arr = self.array(name)
        return np.asarray(arr[rows if rows is not None else slice(None)])

    # ------------------------------------------------------------------ chunks
    def chunk_key(self, name: str, shard: int) -> str:
        """The key of shard `shard`'s chunk of array `name` (its index along N is the shard)."""
        arr = self.array(name)
        return f"{name}/{arr.metadata.encode_chunk_key((shard,) + (0,) * (arr.ndim - 1))}"

    def chunk_path(self, name: str, shard: int) -> Path:
        return self._file(self.chunk_key(name, shard))

    def remove_leftovers(self, shard: int, names: Iterable[str]) -> None:
        """Delete `*.partial` files of this shard's chunks that are older than LEFTOVER_AGE_S
        (left by a writer that died); younger ones may be a live writer's and stay."""
        for name in names:
            key = self.chunk_key(name, shard)
            folder, _, chunk = key.rpartition("/")
            for leftover, age in self.leftovers(folder, f"{chunk}."):
                if age > LEFTOVER_AGE_S:
                    self.remove_key(leftover)

    # ------------------------------------------------------------------ key I/O
    # The only file-system calls on a store's contents (besides zarr's own chunk I/O).
    def _file(self, key: str) -> Path:
        return self.path / key

    def folder_checked(self, names: list[str]) -> list[str]:
        """Arrays whose chunk keys a shard write checks for a folder in the chunk's place (on
        disk it blocks the chunk; in object storage a prefix and an object coexist)."""
        return names

    def listing(self) -> contextlib.AbstractContextManager:
        """A read-only pass over many keys (ObjectKeys answers it from one listing)."""
        return contextlib.nullcontext()

    def key_kind(self, key: str) -> str:
        """"file", "missing", "folder" or "other" (a socket, a dangling link, ...)."""
        p = self._file(key)
        if p.is_file():
            return "file"
        if p.is_dir():
            return "folder"
        return "other" if p.is_symlink() or p.exists() else "missing"

    def key_size(self, key: str) -> int:
        return self._file(key).stat().st_size

    def read_key(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    def write_key(self, key: str, data: bytes) -> None:
        """Write `key` whole or not at all (a temporary file renamed into place)."""
        p = self._file(key)
        if self.key_kind(key) not in ("file", "missing"):
            self.remove_key(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.replace(tmp, p)
        finally:
            tmp.unlink(missing_ok=True)

    def create_key(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists (atomic, also on NFS: a hard link of a
        complete temporary file); whether this call created it."""
        p = self._file(key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")
        try:
            tmp.write_bytes(data)
            os.link(tmp, p)
            return True
        except FileExistsError:
            return False
        finally:
            tmp.unlink(missing_ok=True)

    def move_key(self, key: str, to: str) -> bool:
        """Rename `key` to `to`; False when `key` is already gone (another process moved it)."""
        try:
            os.rename(self._file(key), self._file(to))
            return True
        except FileNotFoundError:
            return False

    def remove_key(self, key: str) -> None:
        """Remove a file, or a folder where a file belongs; nothing if it is gone."""
        p = self._file(key)
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)

    def remove_empty_folder(self, key: str) -> None:
        try:
            self._file(key).rmdir()
        except OSError:
            pass  # not empty (another process uses it), or gone

    def touch_key(self, key: str) -> None:
        os.utime(self._file(key))

    def key_age(self, key: str) -> float | None:
        """Seconds since `key` was last written or touched; None when it is missing."""
        try:
            return time.time() - self._file(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def list_folder(self, key: str) -> list[str]:
        """Names directly under the folder `key` (none when it is not a folder)."""
        p = self._file(key)
        return sorted(c.name for c in p.iterdir()) if p.is_dir() else []

    def leftovers(self, folder: str = "", startswith: str = "") -> list[tuple[str, float]]:
        """(key, age in seconds) of every `*.partial` under `folder` (recursively when
        `startswith` is empty; else only those directly in it whose name starts with it)."""
        base = self._file(folder) if folder else self.path
        if not base.is_dir():
            return []
        found = (base.glob(f"{startswith}*.partial") if startswith else base.rglob("*.partial"))
        now, out = time.time(), []
        for p in sorted(found):
            try:
                out.append((p.relative_to(self.path).as_posix(), now - p.lstat().st_mtime))
            except FileNotFoundError:  # its writer renamed it meanwhile
                continue
        return out


def create_eval_arrays(store: CEStore, name: str, attrs: dict[str, Any]) -> str:
    """Driver only: create `eval/<name>/` (EVAL_ARRAYS) for one classifier in an existing store,
    atomically; return its prefix. `attrs` hold the classifier's path and sha256; if the group
    exists from another checkpoint, StoreError is raised and nothing changes."""
    prefix = eval_prefix(name)
    final = store.path / prefix
    if store.key_kind(f"{prefix}/zarr.json") == "missing":
        try:
            zarr.open_group(zarr_store(store.path), mode="r+").require_group("eval")
        except OSError as e:
            raise write_error(store.path, e) from None
        create_group_atomically(final, EVAL_ARRAYS, store.layout, dict(kind="evaluate", **attrs))
    recorded = store.classifier_sha256(name)
    if recorded != attrs.get("sha256"):
        raise StoreError(f"{store.path} has {prefix} from a classifier with sha256 "
                         f"{str(recorded)[:12]}, not {str(attrs.get('sha256'))[:12]}; give "
                         f"this classifier another name")
    if isinstance(final, ObjectPath):  # the arrays' metadata (see create_or_open)
        write_missing(final, {k: v for k, v in group_objects(EVAL_ARRAYS, store.layout,
                                                             {}).items() if k != "zarr.json"})
    return prefix


class ObjectCEStore(ObjectKeys, CEStore):
    """A store on object storage (s3://, fsspec URLs): CEStore with its key methods on
    objects (cejobs/store/storage.py); CEStore.open picks it for an ObjectPath."""
