"""Creating a store, or one classifier's group in it, atomically; checking an existing one is
the run's own (public contract: docs/store.md).

A group is built in memory (every node's `zarr.json`), then written with
`Storage.create_tree`: on a folder, in a sibling temporary folder renamed into place; on
object storage, its root `zarr.json` by conditional PUT, the other nodes once the caller has
checked the identity (`Storage.finish_tree`). Either way, of two creators racing (SLURM array
tasks), one store results, and a creator with a different configuration is refused.
"""

from __future__ import annotations

import json
import time
from typing import Any, Callable

import zarr

from cejobs.errors import StoreError
from cejobs.store.format import (ATTRS_KEY, COMPRESSORS, OLD_FORMATS, STORE_FORMAT, V2_IDENTITY,
                                 WRITE_CONFIG, write_error)
from cejobs.store.layout import EVAL_ARRAYS, ArraySpec, Layout, chunks_of, eval_prefix, shape_of
from cejobs.store.location import location
from cejobs.store.storage import Storage
from cejobs.store.store import CEStore
from cejobs.version import __version__


def create_arrays(group: zarr.Group, arrays: dict[str, ArraySpec], layout: Layout) -> None:
    """Create `arrays` in `group`, chunked one chunk per shard along "source"."""
    sizes = layout.sizes()
    for name, spec in arrays.items():
        group.create_array(
            name, shape=shape_of(spec, sizes), chunks=chunks_of(spec, sizes, layout.shard_size),
            dtype=spec.dtype, fill_value=spec.fill, dimension_names=spec.dims,
            compressors=COMPRESSORS, config=WRITE_CONFIG,
        )


def group_files(build: Callable[[Any], None]) -> dict[str, bytes]:
    """The objects of a zarr v3 group made by `build(group)` in memory: key -> bytes."""
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    memory = MemoryStore()
    build(zarr.open_group(memory, mode="w-", zarr_format=3))

    async def read_all() -> dict[str, bytes]:
        return {k: (await memory.get(k, default_buffer_prototype())).to_bytes()
                async for k in memory.list()}

    return sync(read_all())


def group_objects(arrays: dict[str, ArraySpec], layout: Layout,
                  attrs: dict[str, Any]) -> dict[str, bytes]:
    """A group's metadata: every node's zarr.json, the root's with `attrs` and a copy of the
    others' (`metadata`, from which `status --verify` rewrites a damaged `zarr.json`)."""
    files = group_files(lambda group: create_arrays(group, arrays, layout))
    meta = {key.rpartition("/")[0]: json.loads(data) for key, data in files.items()
            if key.endswith("/zarr.json")}  # arrays and subgroups
    root = dict(version=__version__, created=time.time(), arrays=sorted(arrays), metadata=meta,
                **attrs)
    files["zarr.json"] = group_files(
        lambda group: group.attrs.update({ATTRS_KEY: root}))["zarr.json"]
    return files


def create_group_atomically(where: Storage, arrays: dict[str, ArraySpec], layout: Layout,
                            attrs: dict[str, Any]) -> bool:
    """Create a group of `arrays` at `where`, whole or not at all; whether this call made it
    (when another process got there first, theirs stays)."""
    try:
        return where.create_tree(group_objects(arrays, layout, attrs))
    except OSError as e:
        raise write_error(where, e) from None


def finish_group(where: Storage, arrays: dict[str, ArraySpec], layout: Layout) -> None:
    """Write the nodes' metadata `create_group_atomically` left to write (object storage),
    also where a creator died early."""
    files = group_objects(arrays, layout, {})
    del files["zarr.json"]
    try:
        where.finish_tree(files)
    except OSError as e:
        raise write_error(where, e) from None


def describe_differences(recorded: dict[str, Any], wanted: dict[str, Any]) -> list[str]:
    keys = sorted(set(recorded) | set(wanted))
    return [f"{k}: store has {recorded.get(k)!r}, this run has {wanted.get(k)!r}"
            for k in keys if recorded.get(k) != wanted.get(k)]


def create_or_open(where: Storage | str, identity: dict[str, Any], layout: Layout,
                   arrays: dict[str, ArraySpec], attrs: dict[str, Any]) -> CEStore:
    """Create the store, or open an existing one whose identity and layout match.

    Concurrent drivers (e.g. SLURM array tasks) agree on one store. A mismatch raises
    StoreError naming the differing fields, and nothing in the store changes. A v1 store (no
    dataset hash) is compared on the fields it recorded.
    """
    where = location(where)
    where.check_store_location()
    where.check_writable()  # a new store's folder, or the existing store itself
    if not where.exists():
        meta = dict(format=STORE_FORMAT, identity=identity, layout=layout.to_attrs(), **attrs)
        create_group_atomically(where, arrays, layout, meta)
    store = CEStore.open(where)
    if store.format in OLD_FORMATS:
        identity = {k: v for k, v in identity.items() if k not in V2_IDENTITY}
    diffs = describe_differences(store.identity, identity)
    diffs += describe_differences(store.layout.to_attrs(), layout.to_attrs())
    if diffs:
        raise StoreError(f"{where} was made with a different configuration; "
                         f"use another --store or the same settings. Differences: "
                         + "; ".join(diffs))
    finish_group(where, arrays, layout)
    return store


def create_eval_arrays(store: CEStore, name: str, attrs: dict[str, Any]) -> str:
    """Driver only: create `eval/<name>/` (EVAL_ARRAYS) for one classifier in an existing store,
    atomically; return its prefix. `attrs` hold the classifier's path and sha256; if the group
    exists from another checkpoint, StoreError is raised and nothing changes."""
    prefix = eval_prefix(name)
    group = store.storage.sub(prefix)
    if store.storage.kind(f"{prefix}/zarr.json") == "missing":
        try:
            zarr.open_group(store.storage.zarr_store(), mode="r+").require_group("eval")
        except OSError as e:
            raise write_error(store.storage, e) from None
        create_group_atomically(group, EVAL_ARRAYS, store.layout,
                                dict(kind="evaluate", **attrs))
    recorded = store.classifier_sha256(name)
    if recorded != attrs.get("sha256"):
        raise StoreError(f"{store.storage} has {prefix} from a classifier with sha256 "
                         f"{str(recorded)[:12]}, not {str(attrs.get('sha256'))[:12]}; give "
                         f"this classifier another name")
    finish_group(group, EVAL_ARRAYS, store.layout)
    return prefix
