"""Datasets as images in [0, 1], shape (N, C, H, W), with int64 labels.

`load_dataset(name, root, split)` understands:

- "digits": scikit-learn's 8x8 handwritten digits (1797 images, 1x8x8, pixel values 0..16 -> /16).
  It ships with scikit-learn, so nothing is downloaded. Fixed split, no shuffling: "train" is the
  first 1347 images and "test" the last 450 (75% / 25%; every class has 133-137 train and 41-48
  test images); "all" is all 1797.
- "cifar10": torchvision's CIFAR10 reader over `<root>/cifar-10-batches-py/` (the "CIFAR-10 python
  version"); splits "train" (50000) and "test" (10000).
- "svhn": torchvision's SVHN reader over `<root>/{train,test,extra}_32x32.mat` (the "cropped
  digits" format; label 10 is digit 0); splits "train", "test", "extra".
- "PATH.npz": arrays `x`, (N, C, H, W) or (N, H, W, C), uint8 (/255) or float in [0, 1], and `y`.
  The split is ignored: the file is the dataset.
- "imagefolder:PATH": torchvision's ImageFolder layout, a folder per class holding its images
  (png, jpg, ...); class i is the i-th folder name in sorted order (`ImageDataset.classes`,
  recorded in a store's identity). Every image is read as grayscale when the first one is,
  else as RGB; all must have one size, or are resized to N x N (bilinear) with `resize=N`.
  The split is ignored.
- "store:PATH": the CEs of a finished cejobs store as a dataset: image i*K + k is `ce/x[i, k]` and
  its label `ce/target[i, k]`. The split is ignored.

torchvision's readers are used with download=False. They check md5 sums of every file; we check
that the files exist (with a clear message) and skip the md5 sums, so that staged copies load
without re-hashing 180 MB per process (and so that tests can read small fake files).
The default root is `data/<name>` under the current directory.

Images stay in memory in their stored dtype (uint8 where possible: CIFAR10 train as float32 would
be 600 MB) and are converted per batch by `ImageDataset.images(indices)`.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from cejobs.errors import DatasetError

DIGITS_TRAIN = 1347  # digits: images [0, 1347) are "train", [1347, 1797) are "test"




class ImageDataset:
    """Images in [0, 1] and int64 labels, held in memory as `pixels * scale`."""

    def __init__(
        self,
        name: str,  # as given to load_dataset
        split: str,  # "train", "test", ... ("all" for npz and stores)
        pixels: np.ndarray,  # (N, C, H, W), uint8 or float; image = pixels * scale
        labels: np.ndarray,  # (N,) int
        num_classes: int,  # labels are in 0..num_classes-1
        scale: float = 1.0,  # multiplier taking pixels to [0, 1]
        classes: list[str] | None = None,  # class names in label order, when the data has them
    ):
        if pixels.ndim != 4 or len(pixels) != len(labels):
            raise DatasetError(f"{name}: images {pixels.shape} and labels {labels.shape} do not match")
        self.name, self.split, self.num_classes = name, split, int(num_classes)
        self.pixels = pixels
        self.labels = np.asarray(labels, dtype=np.int64)
        self.scale = float(scale)
        self.classes = list(classes) if classes is not None else None
        self.image_shape = tuple(int(s) for s in pixels.shape[1:])

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        return (
            f"ImageDataset({self.name!r}, split={self.split!r}, n={len(self)}, "
            f"image_shape={self.image_shape}, num_classes={self.num_classes})"
        )

    def sources_sha256(self, indices: np.ndarray) -> str:
        """sha256 of the pixels (as stored, with their dtype and scale) and labels of
        `indices`: a store's identity records it, so a changed dataset file (or --data-root)
        is refused on resume. 10,000 CIFAR10 sources: 31 MB hashed, about 0.1 s."""
        h = hashlib.sha256(f"{self.image_shape} {self.scale!r}".encode())
        indices = np.asarray(indices, dtype=np.int64)
        for start in range(0, len(indices), 4096):
            block = np.ascontiguousarray(self.pixels[indices[start:start + 4096]])
            h.update(str(block.dtype).encode())
            h.update(block.tobytes())
        h.update(np.ascontiguousarray(self.labels[indices]).tobytes())
        return h.hexdigest()

    def images(self, indices=None) -> Tensor:
        """float32 tensor (n, C, H, W) in [0, 1] of the given indices (all when None)."""
        if indices is None:
            sel = self.pixels
        else:
            if torch.is_tensor(indices):
                indices = indices.cpu().numpy()
            sel = self.pixels[indices if isinstance(indices, slice) else np.asarray(indices, dtype=np.int64)]
        x = torch.from_numpy(np.ascontiguousarray(sel)).to(torch.float32)
        return x * self.scale if self.scale != 1.0 else x


def _check_split(name: str, split: str, allowed: tuple[str, ...]) -> None:
    if split not in allowed:
        raise DatasetError(f"{name} has no split {split!r} (choose from {', '.join(allowed)})")


def _digits_table() -> np.ndarray:
    """(1797, 65) rows of 64 pixels and a label: scikit-learn's `digits.csv.gz`.

    Read straight from the installed package, the file load_digits reads, without importing
    sklearn.datasets (that import alone costs seconds of CPU in every worker).
    """
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        raise DatasetError("digits needs scikit-learn: pip install scikit-learn")
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    if not path.is_file():  # a layout we don't know: let scikit-learn find it
        from sklearn.datasets import load_digits

        d = load_digits()
        return np.column_stack([d.data, d.target])
    return np.loadtxt(path, delimiter=",")


def _digits(split: str) -> ImageDataset:
    _check_split("digits", split, ("train", "test", "all"))
    table = _digits_table()
    pixels = table[:, :64].astype(np.uint8).reshape(-1, 1, 8, 8)  # values 0..16
    labels = table[:, 64].astype(np.int64)
    sel = {"train": slice(0, DIGITS_TRAIN), "test": slice(DIGITS_TRAIN, None), "all": slice(None)}[split]
    return ImageDataset("digits", split, pixels[sel], labels[sel], 10, scale=1.0 / 16.0)


def _trusting(dataset_cls: type) -> type:
    """A torchvision dataset class that skips its md5 sums: the files' existence is checked
    before, with a clearer message than torchvision's."""
    return type(f"_{dataset_cls.__name__}OnDisk", (dataset_cls,),
                {"_check_integrity": lambda self: True})


def _read(what: str, dataset_cls: type, *args, **kwargs):
    """dataset_cls(*args, download=False, **kwargs), or one DatasetError line naming `what`."""
    try:
        return dataset_cls(*args, download=False, **kwargs)
    except Exception as exc:
        raise DatasetError(f"{what} is unreadable: {exc}") from exc


def _missing(paths: list[Path]) -> list[Path]:
    return [p for p in paths if not p.is_file()]


def _cifar10(root: Path, split: str) -> ImageDataset:
    from torchvision.datasets import CIFAR10

    _check_split("cifar10", split, ("train", "test"))
    folder = root / CIFAR10.base_folder
    names = [n for n, _ in CIFAR10.train_list + CIFAR10.test_list] + [CIFAR10.meta["filename"]]
    if _missing([folder / n for n in names]):
        raise DatasetError(
            f"cifar10 not found: expected {folder}/data_batch_1..5, test_batch and batches.meta "
            "(the 'CIFAR-10 python version'); put them there or pass --data-root"
        )

    class _CIFAR10OnDisk(_trusting(CIFAR10)):
        def _load_meta(self) -> None:  # torchvision's, less the md5 check
            with open(folder / self.meta["filename"], "rb") as f:
                self.classes = pickle.load(f, encoding="latin1")[self.meta["key"]]
            self.class_to_idx = {c: i for i, c in enumerate(self.classes)}

    ds = _read(f"cifar10 in {folder}", _CIFAR10OnDisk, str(root), train=split == "train")
    pixels = np.ascontiguousarray(ds.data.transpose(0, 3, 1, 2))  # HWC -> CHW, uint8
    return ImageDataset("cifar10", split, pixels, np.asarray(ds.targets), 10, scale=1.0 / 255.0)


def _svhn(root: Path, split: str) -> ImageDataset:
    from torchvision.datasets import SVHN

    _check_split("svhn", split, tuple(SVHN.split_list))
    path = root / SVHN.split_list[split][1]
    if _missing([path]):
        raise DatasetError(
            f"svhn not found: expected {path} (SVHN 'cropped digits' {split}_32x32.mat); "
            "put it there or pass --data-root"
        )

    ds = _read(f"svhn file {path}", _trusting(SVHN), str(root), split=split)
    return ImageDataset("svhn", split, np.ascontiguousarray(ds.data), ds.labels, 10, scale=1.0 / 255.0)


def _npz(name: str, split: str) -> ImageDataset:
    path = Path(name)
    if not path.is_file():
        raise DatasetError(f"npz dataset not found: {path}")
    try:
        with np.load(path) as f:
            if "x" not in f or "y" not in f:
                raise DatasetError(f"{path} must hold arrays 'x' (images) and 'y' (labels); it has {sorted(f)}")
            x, y = f["x"], f["y"]
    except DatasetError:
        raise
    except Exception as exc:
        raise DatasetError(f"{path} is not a readable .npz: {exc}") from exc
    if x.ndim != 4 or y.ndim != 1 or len(x) != len(y) or len(x) == 0:
        raise DatasetError(f"{path}: need x (N, C, H, W) or (N, H, W, C) and y (N,) with N >= 1, got {x.shape} and {y.shape}")
    if x.shape[-1] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):  # channels last
        x = x.transpose(0, 3, 1, 2)
    if x.dtype == np.uint8:
        scale = 1.0 / 255.0
    elif np.issubdtype(x.dtype, np.floating):
        if x.size and (np.nanmin(x) < 0.0 or np.nanmax(x) > 1.0 or np.isnan(x).any()):
            lo, hi = np.nanmin(x), np.nanmax(x)
            raise DatasetError(f"{path}: float images must lie in [0, 1] (found {lo:.3g}..{hi:.3g}, or NaN)")
        scale = 1.0
    else:
        raise DatasetError(f"{path}: x must be uint8 or float, got {x.dtype}")
    if not np.issubdtype(y.dtype, np.integer) or (y.size and y.min() < 0):
        raise DatasetError(f"{path}: y must hold non-negative integer labels, got {y.dtype}")
    num_classes = int(y.max()) + 1 if y.size else 0
    return ImageDataset(name, split, np.ascontiguousarray(x), y, num_classes, scale=scale)


def _store_classes(attrs: dict, k: int) -> int | None:
    """Classes of a store, from its layout attributes (cejobs.layout.num_classes) when present."""
    meta = attrs.get("cejobs") if isinstance(attrs.get("cejobs"), dict) else attrs
    layout = meta.get("layout")
    if isinstance(layout, dict) and isinstance(layout.get("num_classes"), int):
        return layout["num_classes"]
    if isinstance(meta.get("num_classes"), int):
        return meta["num_classes"]
    config = meta.get("config")
    per_class = config.get("per_class") if isinstance(config, dict) else None
    if isinstance(per_class, int) and per_class > 0 and k % per_class == 0:
        return k // per_class
    return None


class _StoreCEPixels:
    """ce/x of a store seen as (N*K, C, H, W), read from disk per request (never all at once:
    200,000 CIFAR10 CEs are 2.4 GB)."""

    def __init__(self, ce_x):
        self.ce_x = ce_x
        n, k = ce_x.shape[:2]
        self.k = k
        self.shape = (n * k, *ce_x.shape[2:])
        self.ndim = len(self.shape)
        self.dtype = ce_x.dtype

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, index) -> np.ndarray:
        flat = np.arange(self.shape[0])[index] if isinstance(index, slice) else np.asarray(index)
        rows, pos = np.divmod(flat, self.k)
        unique, inverse = np.unique(rows, return_inverse=True)
        block = np.asarray(self.ce_x.oindex[unique])  # (u, K, C, H, W): whole source rows
        return block[inverse, pos]


def _store(name: str, split: str) -> ImageDataset:
    import zarr

    from cejobs.store.location import location

    path = location(name[len("store:"):])  # a path or an object-storage URL
    if not path.exists():
        raise DatasetError(f"store not found: {path}")
    try:
        root = zarr.open_group(path.zarr_store(read_only=True), mode="r")
        ce_x, target = root["ce/x"], root["ce/target"]
        done = np.asarray(root["shard/done"][:]) if "shard" in root and "done" in root["shard"] else None
    except Exception as exc:
        raise DatasetError(f"{path} is not a cejobs store with ce/x and ce/target ({exc})") from exc
    if done is not None and not done.all():
        raise DatasetError(
            f"store {path} is unfinished ({int(done.sum())} of {done.size} shards done); "
            "finish it by re-running generate first"
        )
    n, k = ce_x.shape[:2]
    x = _StoreCEPixels(ce_x)  # index i*K + k, read from the store on demand
    y = np.asarray(target[:]).reshape(n * k).astype(np.int64)
    num_classes = _store_classes(dict(root.attrs), k)
    if num_classes is None:
        num_classes = int(y.max()) + 1 if y.size else 0
    return ImageDataset(name, split, x, y, int(num_classes))


IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".pgm", ".png", ".ppm", ".tif", ".tiff",
                  ".webp")  # torchvision's IMG_EXTENSIONS


def _imagefolder(name: str, split: str, resize: int | None) -> ImageDataset:
    from PIL import Image

    root = Path(name[len("imagefolder:"):])
    if not root.is_dir():
        raise DatasetError(f"image folder not found: {root}")
    classes = sorted(d.name for d in root.iterdir() if d.is_dir() and not d.name.startswith("."))
    files = [(path, label) for label, c in enumerate(classes)
             for path in sorted((root / c).rglob("*"))
             if path.suffix.lower() in IMAGE_SUFFIXES and path.is_file()]
    if not files:
        raise DatasetError(f"{root} holds no images in class folders (ImageFolder layout: "
                           f"{root}/<class>/<image>.png)")
    mode, images, first = None, [], None
    for path, _ in files:
        try:
            with Image.open(path) as img:
                mode = mode or ("L" if img.mode in ("1", "L", "I", "I;16", "F") else "RGB")
                img = img.convert(mode)
                if resize:
                    img = img.resize((resize, resize), Image.BILINEAR)
                pixels = np.asarray(img, dtype=np.uint8)
        except OSError as e:
            raise DatasetError(f"{path} is not a readable image ({e})") from None
        pixels = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
        if first is not None and pixels.shape != first[1].shape:
            raise DatasetError(f"{path} is {pixels.shape[2]}x{pixels.shape[1]}, {first[0]} is "
                               f"{first[1].shape[2]}x{first[1].shape[1]}: give --resize N")
        first = first or (path, pixels)
        images.append(pixels)
    labels = np.asarray([label for _, label in files], dtype=np.int64)
    return ImageDataset(name, split, np.stack(images), labels, len(classes), scale=1.0 / 255.0,
                        classes=classes)


def load_dataset(name: str, root: str | os.PathLike | None = None, split: str = "train",
                 resize: int | None = None) -> ImageDataset:
    """Images in [0, 1] and labels of a named dataset (module docstring). Raises DatasetError.
    resize: the image-folder images' size N x N (imagefolder only)."""
    if name.startswith("imagefolder:"):
        return _imagefolder(name, split, resize)
    if name == "digits":
        return _digits(split)
    if name in ("cifar10", "svhn"):
        root_path = Path(root) if root is not None else Path("data") / name
        return _cifar10(root_path, split) if name == "cifar10" else _svhn(root_path, split)
    if name.startswith("store:"):
        return _store(name, split)
    if name.endswith(".npz"):
        return _npz(name, split)
    raise DatasetError(
        f"unknown dataset {name!r}: use digits, cifar10, svhn, a path ending in .npz, "
        f"store:PATH or imagefolder:PATH"
    )
