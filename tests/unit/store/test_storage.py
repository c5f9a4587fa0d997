"""The storage interface (cejobs/store/storage.py, objects.py) on both kinds: a local folder
and a prefix in object storage (a real moto S3 server, tests/s3_fixtures.py)."""

from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest
import zarr

from cejobs.errors import StoreError
from cejobs.store.location import location
from cejobs.store.objects import ObjectStorage
from cejobs.store.local import LocalStorage


@pytest.fixture(params=["local", "s3"])
def storage(request, tmp_path):
    if request.param == "local":
        return location(tmp_path / "root")
    s3 = request.getfixturevalue("s3_env")
    return location(s3.url(f"unit-{uuid.uuid4().hex[:8]}/root"))


def test_location_parses_once_into_the_right_kind(tmp_path):
    local = location(tmp_path / "a.zarr")
    assert type(local) is LocalStorage and local.local_folder == tmp_path / "a.zarr"
    assert location(f"file://{tmp_path}/a.zarr") == local
    assert location(local) is local
    remote = location("s3://bucket/runs/a.zarr")
    assert type(remote) is ObjectStorage and str(remote) == "s3://bucket/runs/a.zarr"
    assert (local.shares_links, local.folders_block_files) == (True, True)
    assert (remote.shares_links, remote.folders_block_files, remote.local_folder) == (
        False, False, None)
    assert (remote.name, str(remote.parent)) == ("a.zarr", "s3://bucket/runs")
    assert str(remote.sub("claims/shard")) == "s3://bucket/runs/a.zarr/claims/shard"
    with pytest.raises(StoreError, match="object storage"):
        remote.local_path("zarr.json")


def test_write_read_kind_size_and_names(storage):
    assert not storage.exists() and storage.kind("a/b.json") == "missing"
    storage.write("a/b.json", b"first")
    storage.write("a/b.json", b"second")
    storage.write("a/c/d", b"")
    storage.write("top", b"xyz")
    assert storage.exists()
    assert storage.read("a/b.json") == b"second" and storage.size("a/b.json") == 6
    assert [storage.kind(k) for k in ("a/b.json", "a", "a/c", "nothing")] == [
        "file", "folder", "folder", "missing"]
    assert storage.names() == ["a", "top"] and storage.names("a") == ["b.json", "c"]
    assert storage.names("top/none") == []
    assert storage.keys() == ["a/b.json", "a/c/d", "top"]
    assert storage.sub("a").read("b.json") == b"second"
    assert storage.sub("a").keys() == ["b.json", "c/d"]
    with storage.listing():  # answers from one listing: the same answers
        assert [storage.kind(k) for k in ("a/b.json", "a", "nothing")] == [
            "file", "folder", "missing"]
        assert storage.size("top") == 3


def test_create_is_once(storage):
    assert storage.create("leases/x.json", b"mine") is True
    assert storage.create("leases/x.json", b"theirs") is False
    assert storage.read("leases/x.json") == b"mine"
    assert storage.keys() == ["leases/x.json"]  # no temporary file left


def test_move_remove_and_empty_folders(storage):
    storage.write("claims/1", b"one")
    storage.write("claims/failed/1.run.json", b"{}")
    assert storage.move("claims/1", "claims/1.stale") is True
    assert storage.move("claims/1", "claims/1.stale") is False  # already moved
    assert storage.kind("claims/1") == "missing" and storage.read("claims/1.stale") == b"one"
    storage.remove("claims/1.stale")
    storage.remove("claims/1.stale")  # gone: nothing
    storage.remove_empty_folder("claims")  # not empty: kept
    assert storage.keys() == ["claims/failed/1.run.json"]
    storage.remove("claims")
    storage.remove_empty_folder("claims")
    assert storage.keys() == [] and storage.kind("claims") == "missing"


def test_touch_makes_a_key_young(storage):
    assert storage.age("lease") is None
    storage.write("lease", b"holder")
    old = time.time() - 3600
    if storage.local_folder is not None:  # a folder's mtime can be set back; an object's not
        os.utime(storage.local_path("lease"), (old, old))
        assert storage.age("lease") >= 3600
    storage.touch("lease")
    assert storage.age("lease") < 600 and storage.read("lease") == b"holder"


def test_zarr_opens_on_the_storage(storage):
    group = zarr.open_group(storage.zarr_store(), mode="w-", zarr_format=3)
    group.create_array("x", shape=(4,), chunks=(2,), dtype="int64")[:] = np.arange(4)
    assert storage.kind("x/zarr.json") == "file"
    assert [k for k in storage.keys() if k.startswith("x/c")] == ["x/c/0", "x/c/1"]
    again = zarr.open_group(storage.zarr_store(read_only=True), mode="r")
    assert again["x"][:].tolist() == [0, 1, 2, 3]


def test_create_tree_once_then_finish(storage):
    files = {"zarr.json": b"root", "a/zarr.json": b"a", "a/b/zarr.json": b"b"}
    assert storage.create_tree(files) is True
    storage.finish_tree({k: v for k, v in files.items() if k != "zarr.json"})
    assert {k: storage.read(k) for k in storage.keys()} == files
    assert storage.create_tree({"zarr.json": b"other", "c/zarr.json": b"c"}) is False
    assert storage.read("zarr.json") == b"root" and storage.kind("c") == "missing"
    assert storage.parent.names() == [storage.name]  # no temporary folder left beside it


def test_check_writable_and_store_location(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(StoreError, match="is a file, not a folder"):
        location(tmp_path / "file" / "s.zarr").check_writable()
    with pytest.raises(StoreError, match="is a file, not a store folder"):
        location(tmp_path / "file").check_store_location()
    location(tmp_path / "new" / "s.zarr").check_writable()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "new"]  # probe removed
