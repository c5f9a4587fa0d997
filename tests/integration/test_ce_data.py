"""A store's CEs read back as data: `CEDataset` over object storage (a real moto server), and
the labelled xarray view of `cejobs.open_store`."""

from __future__ import annotations

import numpy as np
import pytest
import zarr

import cejobs
from cejobs.store.location import location
from tests.ce_fixtures import LAYOUT, PER_CLASS, write_ce_store
from tests.unit.data.test_ce_dataset import assert_equal, loaded, zarr_ces


@pytest.mark.s3
def test_dataloader_workers_over_s3_read_what_zarr_holds(s3_env):
    url = s3_env.url("ces/run.zarr")
    write_ce_store(url, seed=3)
    group = zarr.open_group(location(url).zarr_store(read_only=True), mode="r")
    for select in ("different-class", "all"):
        data = cejobs.CEDataset(url, select=select)
        assert data.where == url
        assert_equal(loaded(data, workers=2), zarr_ces(group, select))


def test_xarray_view_selects_ces_by_target(tmp_path):
    write_ce_store(tmp_path / "run.zarr")
    tree = cejobs.open_store(tmp_path / "run.zarr").tree
    group = zarr.open_group(str(tmp_path / "run.zarr"), mode="r")
    target = group["ce/target"][:]
    done = np.repeat(group["shard/done"][:], LAYOUT.shard_size)[:LAYOUT.num_sources]
    assert (target[done] == np.repeat(np.arange(10), PER_CLASS)).all()  # the store contract

    x = tree["ce"].x.sel(target=3)
    assert x.dims == ("source", "replicate", "channel", "height", "width")
    np.testing.assert_array_equal(x.values, group["ce/x"][:][:, target[0] == 3])
    np.testing.assert_array_equal(x.replicate.values, np.arange(PER_CLASS))
    np.testing.assert_array_equal(tree["ce"].source_index.values, group["source/index"][:])
    np.testing.assert_array_equal(tree["ce"].label.values, group["source/y"][:])
    first = tree["ce"].l2.sel(target=7, replicate=1)
    np.testing.assert_array_equal(first.values, group["ce/l2"][:][:, 7 * PER_CLASS + 1])
    assert list(tree["ce"].data_vars) == ["x", "l2", "l0"]
    assert list(tree["source"].data_vars) == ["x", "y", "index"]
    assert list(tree["shard"].data_vars) == ["done", "started_at", "finished_at",
                                             "write_seconds"]
