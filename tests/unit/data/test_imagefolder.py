"""`--dataset imagefolder:PATH`: torchvision's ImageFolder layout read as an ImageDataset."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cejobs.data import load_dataset
from cejobs.errors import DatasetError


def write_folder(root: Path, images: dict[str, list[np.ndarray]]) -> Path:
    """root/<class>/<i>.png for each class's uint8 images ((H, W) gray or (H, W, 3) RGB)."""
    for name, arrays in images.items():
        (root / name).mkdir(parents=True)
        for i, a in enumerate(arrays):
            Image.fromarray(a).save(root / name / f"{i:03d}.png")
    return root


def test_classes_are_sorted_folder_names_and_pixels_exact(tmp_path):
    rng = np.random.default_rng(0)
    images = {name: [rng.integers(0, 256, (8, 8), dtype=np.uint8) for _ in range(n)]
              for name, n in (("zebra", 2), ("ant", 1), ("cat", 3))}
    ds = load_dataset(f"imagefolder:{write_folder(tmp_path / 'f', images)}")
    assert ds.classes == ["ant", "cat", "zebra"] and ds.num_classes == 3
    assert ds.labels.tolist() == [0, 1, 1, 1, 2, 2]
    assert ds.image_shape == (1, 8, 8)
    want = np.stack([images["ant"][0], *images["cat"], *images["zebra"]])[:, None]
    np.testing.assert_array_equal(ds.pixels, want)
    assert ds.scale == 1.0 / 255.0
    assert ds.sources_sha256(np.arange(6)) == load_dataset(
        f"imagefolder:{tmp_path / 'f'}").sources_sha256(np.arange(6))


def test_rgb_images_and_resize(tmp_path):
    rgb = np.zeros((16, 12, 3), dtype=np.uint8)
    rgb[..., 0] = 255
    root = write_folder(tmp_path / "f", {"a": [rgb], "b": [rgb]})
    with pytest.raises(DatasetError, match="give --resize N"):
        write_folder(tmp_path / "g", {"a": [rgb], "b": [rgb[:8]]})
        load_dataset(f"imagefolder:{tmp_path / 'g'}")
    ds = load_dataset(f"imagefolder:{root}", resize=8)
    assert ds.image_shape == (3, 8, 8)
    np.testing.assert_array_equal(ds.images()[:, 0].numpy(), np.ones((2, 8, 8), np.float32))
    np.testing.assert_array_equal(ds.images()[:, 1:].numpy(), np.zeros((2, 2, 8, 8), np.float32))


def test_missing_or_empty_folder_is_one_line(tmp_path):
    with pytest.raises(DatasetError, match="image folder not found"):
        load_dataset(f"imagefolder:{tmp_path / 'nothing'}")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DatasetError, match="holds no images in class folders"):
        load_dataset(f"imagefolder:{tmp_path / 'empty'}")
