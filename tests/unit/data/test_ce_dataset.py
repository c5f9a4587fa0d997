"""CEDataset: a store's CEs through a DataLoader with worker processes equal what zarr holds."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
import zarr
from torch.utils.data import DataLoader

from cejobs.ce_dataset import CEDataset
from cejobs.errors import DatasetError
from tests.ce_fixtures import DONE, LAYOUT, write_ce_store


def zarr_ces(group: zarr.Group, select: str) -> dict[str, np.ndarray]:
    """The done shards' CEs of `select`, in store order, read with zarr alone."""
    done = np.repeat(group["shard/done"][:], LAYOUT.shard_size)[:LAYOUT.num_sources]
    target, label = group["ce/target"][:], group["source/y"][:]
    keep = np.broadcast_to(done[:, None], target.shape).copy()
    if select == "same-class":
        keep &= target == label[:, None]
    elif select == "different-class":
        keep &= target != label[:, None]
    row, ce = np.nonzero(keep)
    return {"x": group["ce/x"][:][row, ce], "target": target[row, ce],
            "source_index": group["source/index"][:][row], "source_label": label[row],
            "l2": group["ce/l2"][:][row, ce], "l0": group["ce/l0"][:][row, ce]}


def loaded(data: CEDataset, workers: int) -> dict[str, np.ndarray]:
    """Every item of `data`, through a DataLoader with `workers` worker processes."""
    loader = DataLoader(data, batch_size=7, num_workers=workers)
    parts = [batch._asdict() for batch in loader]
    return {name: torch.cat([p[name] for p in parts]).numpy() for name in parts[0]}


def assert_equal(got: dict[str, np.ndarray], want: dict[str, np.ndarray]) -> None:
    assert list(got) == ["x", "target", "source_index", "source_label", "l2", "l0"]
    for name, values in want.items():
        np.testing.assert_array_equal(got[name], values, err_msg=name)


@pytest.fixture(scope="module")
def local_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("ces") / "run.zarr"
    write_ce_store(path)
    return path


@pytest.mark.parametrize("select", ["different-class", "same-class", "all"])
def test_dataloader_workers_read_what_zarr_holds(local_store, select):
    data = CEDataset(local_store, select=select)
    want = zarr_ces(zarr.open_group(str(local_store), mode="r"), select)
    assert len(data) == len(want["target"]) > 0
    assert_equal(loaded(data, workers=2), want)


def test_only_done_shards_and_selections_partition_them(local_store):
    every = CEDataset(local_store, select="all")
    done_rows = np.concatenate([np.arange(LAYOUT.rows(s).start, LAYOUT.rows(s).stop)
                                for s in DONE])
    assert sorted(set(every.rows.tolist())) == done_rows.tolist()
    assert len(every) == len(done_rows) * LAYOUT.ces_per_source
    same, different = (CEDataset(local_store, select=s) for s in ("same-class", "different-class"))
    assert len(same) + len(different) == len(every)
    assert (same.targets == same.source_labels).all()
    assert (different.targets != different.source_labels).all()


def test_transform_and_batch_images(local_store):
    data = CEDataset(local_store, select="all", transform=lambda x: 1 - x)
    np.testing.assert_array_equal(data[3].x.numpy(), 1 - data.image(3).numpy())
    pick = np.array([40, 0, 41, 3])  # two shards, out of order
    np.testing.assert_array_equal(data.images(pick).numpy(),
                                  np.stack([data.image(i).numpy() for i in pick]))


def test_pickles_without_its_open_store(local_store):
    data = CEDataset(local_store)
    data[0]  # opens the store and caches a chunk
    assert data._store is not None and data._chunk is not None
    copy = pickle.loads(pickle.dumps(data))
    assert copy._store is None and copy._chunk is None
    np.testing.assert_array_equal(copy[5].x.numpy(), data[5].x.numpy())


def test_bad_selection_is_one_line(local_store):
    with pytest.raises(DatasetError, match="select must be one of"):
        CEDataset(local_store, select="other")
