"""Dataset readers: digits split, fake CIFAR10/SVHN files through torchvision's readers, npz, stores."""

import pickle

import numpy as np
import pytest
import scipy.io
import torch
import zarr
from sklearn.datasets import load_digits

from cejobs.data import DIGITS_TRAIN, DatasetError, ImageDataset, load_dataset


def test_digits_split_sizes_labels_and_range():
    train, test, full = (load_dataset("digits", split=s) for s in ("train", "test", "all"))
    assert (len(train), len(test), len(full)) == (1347, 450, 1797) and DIGITS_TRAIN == 1347
    ref = load_digits()
    for ds in (train, test):
        assert isinstance(ds, ImageDataset) and ds.name == "digits"
        assert ds.num_classes == 10 and ds.image_shape == (1, 8, 8)
        assert ds.labels.dtype == np.int64 and set(ds.labels.tolist()) == set(range(10))
    assert train.split == "train" and test.split == "test"
    np.testing.assert_array_equal(train.labels, ref.target[:1347])
    np.testing.assert_array_equal(test.labels, ref.target[1347:])
    assert np.bincount(test.labels).min() >= 41  # every class is in the test split
    x = full.images()
    assert x.dtype == torch.float32 and x.shape == (1797, 1, 8, 8)
    assert float(x.min()) == 0.0 and float(x.max()) == 1.0
    torch.testing.assert_close(x[:, 0], torch.tensor(ref.images / 16.0, dtype=torch.float32))
    torch.testing.assert_close(test.images([0, 2]), x[[1347, 1349]])
    torch.testing.assert_close(test.images(torch.tensor([1])), x[[1348]])
    torch.testing.assert_close(train.images(slice(0, 3)), x[:3])
    assert train.pixels.dtype == np.uint8  # kept small in memory


def test_digits_bad_split():
    with pytest.raises(DatasetError, match="digits has no split 'val'"):
        load_dataset("digits", split="val")


def test_unknown_dataset_name():
    with pytest.raises(DatasetError, match="unknown dataset 'mnist'"):
        load_dataset("mnist")


# ----------------------------------------------------------------------------- CIFAR10
def _fake_cifar10(root, n=4):
    """Five train batches and a test batch of n images each, in the 'CIFAR-10 python version' format."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, (n, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, n).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels, "filenames": []}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog",
                                     "horse", "ship", "truck"], "num_vis": 3072}, f)
    return batches


def test_cifar10_through_torchvision_reader(tmp_path):
    batches = _fake_cifar10(tmp_path)
    train = load_dataset("cifar10", str(tmp_path), "train")
    test = load_dataset("cifar10", tmp_path, "test")
    assert (len(train), len(test)) == (20, 4)
    assert train.image_shape == (3, 32, 32) and train.num_classes == 10 and train.pixels.dtype == np.uint8
    data, labels = batches["data_batch_2"]
    np.testing.assert_array_equal(train.labels[4:8], labels)
    expected = torch.tensor(data[1].reshape(3, 32, 32) / 255.0, dtype=torch.float32)
    torch.testing.assert_close(train.images([5])[0], expected)  # row-major R, G, B planes
    np.testing.assert_array_equal(test.labels, batches["test_batch"][1])
    with pytest.raises(DatasetError, match="cifar10 has no split 'extra'"):
        load_dataset("cifar10", tmp_path, "extra")


def test_cifar10_missing_files_names_them(tmp_path):
    with pytest.raises(DatasetError) as info:
        load_dataset("cifar10", tmp_path / "none", "train")
    msg = str(info.value)
    assert msg.startswith("cifar10 not found: expected ") and "\n" not in msg
    assert f"{tmp_path / 'none' / 'cifar-10-batches-py'}/data_batch_1..5" in msg
    assert "test_batch" in msg and "--data-root" in msg
    _fake_cifar10(tmp_path)
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(DatasetError, match="cifar10 not found"):  # the train split needs all files too
        load_dataset("cifar10", tmp_path, "train")


# ----------------------------------------------------------------------------- SVHN
def test_svhn_through_torchvision_reader(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (32, 32, 3, 5), dtype=np.uint8)
    y = np.array([[10], [1], [2], [9], [10]], dtype=np.uint8)  # SVHN writes digit 0 as 10
    scipy.io.savemat(tmp_path / "test_32x32.mat", {"X": x, "y": y})
    ds = load_dataset("svhn", tmp_path, "test")
    assert len(ds) == 5 and ds.image_shape == (3, 32, 32) and ds.num_classes == 10
    assert ds.labels.tolist() == [0, 1, 2, 9, 0]
    expected = torch.tensor(x[..., 3].transpose(2, 0, 1) / 255.0, dtype=torch.float32)
    torch.testing.assert_close(ds.images([3])[0], expected)


def test_svhn_missing_file_names_it(tmp_path):
    with pytest.raises(DatasetError, match=r"svhn not found: expected .*train_32x32\.mat.*--data-root"):
        load_dataset("svhn", tmp_path, "train")
    with pytest.raises(DatasetError, match="svhn has no split"):
        load_dataset("svhn", tmp_path, "valid")


# ----------------------------------------------------------------------------- npz
def test_npz_channels_first_uint8(tmp_path):
    x = np.arange(2 * 3 * 4 * 4, dtype=np.uint8).reshape(2, 3, 4, 4)
    np.savez(tmp_path / "a.npz", x=x, y=np.array([1, 4]))
    ds = load_dataset(str(tmp_path / "a.npz"))
    assert ds.image_shape == (3, 4, 4) and ds.num_classes == 5 and ds.labels.dtype == np.int64
    torch.testing.assert_close(ds.images([1]), torch.tensor(x[1:] / 255.0, dtype=torch.float32))


def test_npz_channels_last_float(tmp_path):
    x = np.random.default_rng(0).random((3, 5, 5, 1)).astype(np.float32)
    np.savez(tmp_path / "b.npz", x=x, y=np.array([0, 2, 1]))
    ds = load_dataset(str(tmp_path / "b.npz"), split="test")
    assert ds.image_shape == (1, 5, 5) and len(ds) == 3
    torch.testing.assert_close(ds.images(), torch.tensor(x.transpose(0, 3, 1, 2)))


def test_npz_bad_inputs(tmp_path):
    with pytest.raises(DatasetError, match="npz dataset not found"):
        load_dataset(str(tmp_path / "none.npz"))
    np.savez(tmp_path / "c.npz", images=np.zeros((1, 1, 2, 2)))
    with pytest.raises(DatasetError, match="must hold arrays 'x'"):
        load_dataset(str(tmp_path / "c.npz"))
    np.savez(tmp_path / "d.npz", x=np.full((1, 1, 2, 2), 2.0), y=np.array([0]))
    with pytest.raises(DatasetError, match=r"must lie in \[0, 1\]"):
        load_dataset(str(tmp_path / "d.npz"))
    np.savez(tmp_path / "e.npz", x=np.zeros((2, 1, 2, 2)), y=np.array([0]))
    with pytest.raises(DatasetError, match="need x"):
        load_dataset(str(tmp_path / "e.npz"))


# ----------------------------------------------------------------------------- store:PATH
def _tiny_store(path, done=(True, True)):
    n, k, classes = 3, 4, 2  # per_class 2
    g = zarr.open_group(str(path), mode="w", zarr_format=3)
    x = np.random.default_rng(0).random((n, k, 1, 2, 2)).astype(np.float32)
    target = np.tile(np.repeat(np.arange(classes), 2), (n, 1))
    g.create_array("ce/x", data=x, chunks=(2, k, 1, 2, 2))
    g.create_array("ce/target", data=target.astype(np.int64), chunks=(2, k))
    g.create_array("shard/done", data=np.array(done), chunks=(2,))
    g.attrs["cejobs"] = {"layout": {"num_sources": n, "ces_per_source": k, "num_classes": classes}}
    return x, target


def test_store_ces_as_dataset(tmp_path):
    x, target = _tiny_store(tmp_path / "s.zarr")
    ds = load_dataset(f"store:{tmp_path / 's.zarr'}")
    assert len(ds) == 12 and ds.num_classes == 2 and ds.image_shape == (1, 2, 2)
    i, k = 2, 3
    torch.testing.assert_close(ds.images([i * 4 + k])[0], torch.tensor(x[i, k]))
    assert ds.labels[i * 4 + k] == target[i, k] == 1
    assert ds.labels.tolist() == target.reshape(-1).tolist()


def test_store_unfinished_or_missing(tmp_path):
    _tiny_store(tmp_path / "s.zarr", done=(True, False))
    with pytest.raises(DatasetError, match="unfinished .1 of 2 shards done"):
        load_dataset(f"store:{tmp_path / 's.zarr'}")
    with pytest.raises(DatasetError, match="store not found"):
        load_dataset(f"store:{tmp_path / 'none.zarr'}")


def test_digits_read_without_sklearn_import_equals_load_digits():
    """digits comes from scikit-learn's own CSV, read directly: the same images and labels."""
    from sklearn.datasets import load_digits

    ref = load_digits()
    all_ = load_dataset("digits", split="all")
    np.testing.assert_array_equal(all_.images().numpy()[:, 0], (ref.images / 16.0).astype(np.float32))
    np.testing.assert_array_equal(all_.labels, ref.target)
