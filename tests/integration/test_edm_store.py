"""`python -m cejobs.generate --model EDM_FOLDER` on digits-shaped data (8x8x1, 10 classes):
a converted EDM network alone and as a cond/uncond pair gives a complete store whose identity
records the kind and the sha256 of both files, and a changed weight file is refused on
resume in one line (docs/models.md, "EDM networks")."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch

from cejobs.models.edm import write_edm_folder
from cejobs.models.edm_unet import VPPrecond
from cejobs.store.store import CEStore
from tests.conftest import run_module
from tests.edm_fixtures import golden_network


def digits_network(name: str, seed: int) -> tuple[dict, dict[str, torch.Tensor]]:
    """The golden network's architecture for one-channel images, with seeded weights (EDM
    zero-initialises some output layers, so every weight is redrawn: the CEs then depend on
    the network)."""
    kwargs, _ = golden_network(name)
    kwargs = {**kwargs, "img_channels": 1}
    torch.manual_seed(seed)
    state = VPPrecond(**kwargs).state_dict()
    return kwargs, {k: torch.randn_like(v) * 0.05 if v.is_floating_point() else v
                    for k, v in state.items()}


@pytest.fixture(scope="module")
def edm_folders(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("edm")
    for name, seed in (("cond", 0), ("uncond", 1)):
        write_edm_folder(root / name, *digits_network(name, seed))
    return {"cond": root / "cond", "uncond": root / "uncond"}


def gen(store: Path, *model: str, check: bool = True):
    return run_module("cejobs.generate", "--backend", "local", *model, "--sources", "4",
                      "--shard-size", "2", "--steps", "4", "--per-class", "1", "--threads", "1",
                      "--store", store, "--no-progress", check=check)


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_edm_network_and_pair_make_complete_stores(edm_folders, tmp_path):
    alone = tmp_path / "alone.zarr"
    gen(alone, "--model", str(edm_folders["cond"]))
    store = CEStore.open(alone)
    assert store.done().all()
    ce = store.read_rows("ce/x")
    assert ce.shape == (4, 10, 1, 8, 8) and np.isfinite(ce).all()
    assert store.identity["model_kind"] == "edm"
    files = store.identity["model_files"]
    assert sorted(files.values()) == sorted(sha256(edm_folders["cond"] / name)
                                            for name in ("edm.json", "model.safetensors"))

    pair = tmp_path / "pair.zarr"
    gen(pair, "--model", str(edm_folders["cond"]), "--uncond-model", str(edm_folders["uncond"]))
    paired = CEStore.open(pair)
    assert paired.done().all() and paired.identity["model_kind"] == "pair:edm+edm"
    assert not np.array_equal(paired.read_rows("ce/x"), ce)  # guided by the other network


def test_changed_edm_weights_are_refused_on_resume(edm_folders, tmp_path):
    model = tmp_path / "cond"
    model.mkdir()
    for name in ("edm.json", "model.safetensors"):
        (model / name).write_bytes((edm_folders["cond"] / name).read_bytes())
    store = tmp_path / "s.zarr"
    gen(store, "--model", str(model))
    kwargs, state = digits_network("cond", seed=2)
    (model / "edm.json").unlink()
    (model / "model.safetensors").unlink()
    write_edm_folder(model, kwargs, state)
    r = gen(store, "--model", str(model), check=False)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "model_sha256" in errors[0], r.stderr
