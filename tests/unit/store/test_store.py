"""The store: contract (names, shapes, dtypes, dims), one writer per chunk, refusal, verify."""

import os
import time

import numpy as np
import pytest
import zarr

from cejobs.jobs.methods import METHODS
from cejobs.jobs.kinds import pending_shards
from cejobs.store.layout import Layout, generation_arrays
from cejobs.store.repair import repair
from cejobs.errors import StoreError
from cejobs.store.create import create_or_open
from cejobs.store.format import LEFTOVER_AGE_S
from cejobs.store.store import CEStore
from cejobs.jobs.kinds import KINDS
from cejobs.jobs.tasks import ShardTask
from cejobs.drivers.status import busy_time, store_status

LAYOUT = Layout(num_sources=10, ces_per_source=6, num_classes=3, image_shape=(1, 4, 4),
                shard_size=4)
IDENTITY = {"method": "boltzmann", "w": 15.0, "model_sha256": "ab" * 32}


def _pending(store):
    return pending_shards(store, ShardTask(KINDS["generate"], str(store.storage), None))


def _make(path, identity=IDENTITY, robust=False):
    extras = METHODS["robust"].arrays if robust else None
    return create_or_open(path, identity, LAYOUT, generation_arrays(extras=extras),
                          {"config": {"method": "boltzmann"}, "kind": "generate"})


def _shard_data(shard, value):
    rows = LAYOUT.rows(shard)
    n = rows.stop - rows.start
    return {
        "source/x": np.full((n, 1, 4, 4), value, np.float32),
        "source/y": np.arange(rows.start, rows.stop) % 3,
        "source/index": np.arange(rows.start, rows.stop),
        "ce/x": np.full((n, 6, 1, 4, 4), value, np.float32),
        "ce/target": np.tile(np.repeat(np.arange(3), 2), (n, 1)),
        "ce/l2": np.full((n, 6), value, np.float32),
        "ce/l0": np.full((n, 6), 0.5, np.float32),
    }


def test_contract(tmp_path):
    store = _make(tmp_path / "s.zarr")
    g = zarr.open_group(str(store.storage), mode="r")
    expected = {
        "source/x": ((10, 1, 4, 4), "float32", ("source", "channel", "height", "width")),
        "source/y": ((10,), "int64", ("source",)),
        "source/index": ((10,), "int64", ("source",)),
        "ce/x": ((10, 6, 1, 4, 4), "float32", ("source", "ce", "channel", "height", "width")),
        "ce/target": ((10, 6), "int64", ("source", "ce")),
        "ce/l2": ((10, 6), "float32", ("source", "ce")),
        "ce/l0": ((10, 6), "float32", ("source", "ce")),
        "shard/done": ((3,), "bool", ("shard",)),
    }
    for name, (shape, dtype, dims) in expected.items():
        arr = g[name]
        assert arr.shape == shape and str(arr.dtype) == dtype, name
        assert tuple(arr.metadata.dimension_names) == dims, name
        assert arr.chunks[0] == (4 if dims[0] == "source" else 1), name
    attrs = dict(g.attrs)["cejobs"]
    assert attrs["identity"] == IDENTITY and attrs["layout"]["shard_size"] == 4
    assert attrs["version"] and attrs["format"] == "cejobs-store-v2"


def test_write_then_done_and_status(tmp_path):
    store = _make(tmp_path / "s.zarr")
    assert _pending(store) == [0, 1, 2]
    store.write_shard(2, _shard_data(2, 0.0), started_at=100.0)  # zeros: still written
    assert _pending(store) == [0, 1]
    assert store.chunk_path("ce/x", 2).exists() and store.chunk_path("source/x", 2).exists()
    np.testing.assert_array_equal(store.read_rows("source/index", slice(8, 10)), [8, 9])
    st = store_status(store)
    assert (st.shards_done, st.shards_total, st.ces_done, st.ces_total) == (1, 3, 12, 60)


def test_reopen_with_other_identity_is_refused_and_store_unchanged(tmp_path):
    path = tmp_path / "s.zarr"
    _make(path).write_shard(0, _shard_data(0, 1.0))
    before = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    with pytest.raises(StoreError, match=r"w: store has 15.0, this run has 2.0"):
        _make(path, identity={**IDENTITY, "w": 2.0})
    after = {p: p.read_bytes() for p in path.rglob("*") if p.is_file()}
    assert before == after
    assert _pending(_make(path)) == [1, 2]  # same identity resumes


def test_not_a_store(tmp_path):
    (tmp_path / "x.zarr").mkdir()
    with pytest.raises(StoreError, match="no cejobs store"):
        CEStore.open(tmp_path / "x.zarr")


def test_unwritable_path(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    with pytest.raises(StoreError, match="cannot write the store"):
        _make(blocker / "sub" / "s.zarr")


def test_verify_finds_truncated_chunk_and_partial(tmp_path):
    store = _make(tmp_path / "s.zarr")
    for s in range(3):
        store.write_shard(s, _shard_data(s, float(s + 1)))
    assert not repair(store, decode=True).findings
    chunk = store.chunk_path("ce/x", 1)
    chunk.write_bytes(chunk.read_bytes()[:10])  # truncated
    leftover = store.chunk_path("ce/l2", 2).with_name("0.deadbeef.partial")
    leftover.write_bytes(b"xx")
    found = repair(store, decode=True)
    assert found.generation == [1]  # a leftover is no damage: chunks are renamed in whole
    assert "verify: shard 1: unreadable chunk ce/x/c/1/0/0/0/0" in found.lines()[0]
    assert "kept leftover ce/l2/c/2/0.deadbeef.partial" in found.lines()[1]
    old = time.time() - LEFTOVER_AGE_S - 1
    os.utime(leftover, (old, old))
    store.write_shard(2, _shard_data(2, 3.0))  # rewriting a shard removes its old leftovers
    assert not leftover.exists()


def test_busy_time_merges_overlaps():
    assert busy_time(np.array([0.0, 1.0, 10.0]), np.array([2.0, 3.0, 11.0])) == 4.0
    assert busy_time(np.array([]), np.array([])) == 0.0
