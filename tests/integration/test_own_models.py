"""`python -m cejobs.generate --model` with a model of another format (docs/models.md): a
diffusers folder, a cond/uncond pair, an entry point, on digits-shaped data and on an image
folder; the store is complete, records the model's kind and files, and refuses a changed
weight file on resume."""

from __future__ import annotations

import os
import shutil
import textwrap
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from cejobs.store.store import CEStore
from tests.conftest import run_module
from tests.diffusers_fixtures import tiny_unet


def gen(store: Path, *model: str, extra: tuple[str, ...] = (), env: dict | None = None,
        check: bool = True):
    return run_module("cejobs.generate", "--backend", "local", *model, "--sources", "4",
                      "--shard-size", "2", "--steps", "4", "--per-class", "1", "--threads", "1",
                      "--store", store, "--no-progress", *extra, env=env, check=check)


def assert_complete(store: Path) -> CEStore:
    opened = CEStore.open(store)
    assert opened.done().all()
    ce = opened.read_rows("ce/x")
    assert ce.shape == (4, 10, 1, 8, 8) and np.isfinite(ce).all()
    return opened


@pytest.fixture(scope="module")
def plain(diffusers_models, tmp_path_factory) -> dict[str, Path]:
    """A store made with a copy of the diffusers UNet folder (changed by the last test)."""
    folder = tmp_path_factory.mktemp("plain")
    model = folder / "unet"
    shutil.copytree(diffusers_models["unet"], model)
    gen(folder / "s.zarr", "--model", str(model))
    return {"model": model, "store": folder / "s.zarr"}


def test_pair_and_entry_point_make_complete_stores(diffusers_models, plain, tmp_path):
    pair = tmp_path / "pair.zarr"
    gen(pair, "--model", str(diffusers_models["cond"]), "--uncond-model",
        str(diffusers_models["uncond"]))
    assert assert_complete(pair).identity["model_kind"] == "pair:diffusers+diffusers"

    (tmp_path / "mynets").mkdir()
    (tmp_path / "mynets" / "__init__.py").write_text("")
    (tmp_path / "mynets" / "digits.py").write_text(textwrap.dedent(f"""\
        from cejobs.models.spec import load_model


        def make():
            loaded = load_model({str(diffusers_models['unet'])!r})
            return loaded.model, {{"image_shape": [1, 8, 8], "num_classes": 10}}
        """))
    entry = tmp_path / "entry.zarr"
    env = {"PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    gen(entry, "--model", "py:mynets.digits:make", env=env)
    assert assert_complete(entry).identity["model_kind"] == "python"
    # the same network as the diffusers folder, so the same CEs
    np.testing.assert_array_equal(CEStore.open(entry).read_rows("ce/x"),
                                  CEStore.open(plain["store"]).read_rows("ce/x"))


def test_image_folder_resized_to_the_model(diffusers_models, tmp_path):
    rng = np.random.default_rng(0)
    for c in range(10):
        (tmp_path / "images" / f"class{c}").mkdir(parents=True)
        Image.fromarray(rng.integers(0, 256, (16, 16), dtype=np.uint8)).save(
            tmp_path / "images" / f"class{c}" / "a.png")
    dataset = ("--dataset", f"imagefolder:{tmp_path / 'images'}")
    model = ("--model", str(diffusers_models["unet"]))
    r = gen(tmp_path / "no.zarr", *model, extra=dataset, check=False)
    assert r.returncode == 2 and "(give --resize N)" in r.stderr
    store = tmp_path / "folder.zarr"
    gen(store, *model, extra=(*dataset, "--resize", "8"))
    opened = assert_complete(store)
    assert opened.identity["dataset_classes"] == [f"class{c}" for c in range(10)]
    assert opened.read_rows("source/y").tolist() == [0, 1, 2, 3]


@pytest.mark.parametrize("model, words", [
    ("google/ddpm-cifar10-32", "download it elsewhere first"),
    ("py:nowhere.module:make", "not importable here"),
])
def test_unusable_model_is_one_line_before_any_work(tmp_path, model, words):
    r = gen(tmp_path / "s.zarr", "--model", model, check=False)
    assert r.returncode == 2 and words in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "s.zarr").exists()


def test_store_records_kind_and_files_and_refuses_a_changed_weight(plain):
    model, store = plain["model"], plain["store"]
    identity = assert_complete(store).identity
    assert identity["model_kind"] == "diffusers"
    assert set(identity["model_files"]) == {"config.json", "diffusion_pytorch_model.safetensors"}
    assert "store complete" in gen(store, "--model", str(model)).stdout  # resumes

    tiny_unet(11, seed=7).save_pretrained(model)  # another network, same config
    r = gen(store, "--model", str(model), check=False)
    assert r.returncode == 2, r.stderr
    line = r.stderr.strip().splitlines()[-1]
    assert line.startswith("error: ") and "model_sha256: store has" in line
    assert "'diffusion_pytorch_model.safetensors'" in line
