"""`--model` kinds (models/spec.py): each adapter's eps equals its network called directly
with the documented inputs (bit for bit), bytes shipped to a worker give the same network and
hash, and what cannot be read exactly is refused in one line."""

from __future__ import annotations

import json
import shutil
import textwrap
from pathlib import Path

import pytest
import torch

from cejobs.errors import CheckpointError
from cejobs.method.sampler import guided_eps
from cejobs.models.spec import load_model, model_files
from tests.diffusers_fixtures import DDPM_SCHEDULER, save_pipeline, tiny_unet

X = torch.randn(4, 1, 8, 8, generator=torch.Generator().manual_seed(0))
T = torch.tensor([1e-3, 0.25, 0.5, 1.0])
Y = torch.tensor([0, 3, 9, 10])  # 10: the null label


def direct_unet(folder: Path):
    from diffusers import UNet2DModel

    return UNet2DModel.from_pretrained(folder).eval()


@torch.no_grad()
@pytest.mark.parametrize("name, unet_dir", [("unet", "."), ("pipeline", "unet")])
def test_diffusers_eps_is_the_unet_at_999t_with_class_labels(diffusers_models, name, unet_dir):
    loaded = load_model(str(diffusers_models[name]))
    unet = direct_unet(diffusers_models[name] / unet_dir)
    want = unet(X, T * 999, class_labels=Y).sample
    assert torch.equal(loaded.model(X, T, Y), want)
    assert loaded.kind == "diffusers"
    assert loaded.meta["image_shape"] == [1, 8, 8] and loaded.meta["num_classes"] == 10
    files = {p.relative_to(diffusers_models[name]).as_posix()
             for p in model_files(str(diffusers_models[name]))}
    assert set(loaded.meta["files"]) == files
    if name == "pipeline":
        assert files == {"model_index.json", "scheduler/scheduler_config.json",
                         "unet/config.json", "unet/diffusion_pytorch_model.safetensors"}


@torch.no_grad()
def test_shipped_bytes_give_the_same_network_and_hash(diffusers_models, tmp_path):
    spec = str(tmp_path / "moved")
    shutil.copytree(diffusers_models["pipeline"], spec)
    data = {str(p): p.read_bytes() for p in model_files(spec)}
    on_disk = load_model(spec)
    shutil.rmtree(spec)  # the worker has no copy: only the driver's bytes
    shipped = load_model(spec, data=data)
    assert shipped.sha256 == on_disk.sha256 and shipped.meta == on_disk.meta
    assert torch.equal(shipped.model(X, T, Y), on_disk.model(X, T, Y))


@torch.no_grad()
def test_pair_guidance_combines_the_two_networks_as_the_null_label(diffusers_models):
    pair = load_model(str(diffusers_models["cond"]), str(diffusers_models["uncond"])).model
    cond, uncond = direct_unet(diffusers_models["cond"]), direct_unet(diffusers_models["uncond"])
    target = torch.tensor([0, 3, 9, 5])
    eps_c = cond(X, T * 999, class_labels=target).sample
    eps_u = uncond(X, T * 999).sample
    w = 2.0
    assert torch.equal(guided_eps(pair, X, T, target, w, 10), (1 + w) * eps_c - w * eps_u)
    # called as one network, the null label selects the unconditional member
    out = pair(X, T, Y)
    assert torch.equal(out[3], eps_u[3])
    assert torch.equal(out[:3], cond(X[:3], T[:3] * 999, class_labels=Y[:3]).sample)


def test_pair_identity_hashes_both_networks(diffusers_models):
    loaded = load_model(str(diffusers_models["cond"]), str(diffusers_models["uncond"]))
    assert loaded.kind == "pair:diffusers+diffusers"
    assert set(loaded.meta["files"]) == {
        f"{role}/{name}" for role in ("cond", "uncond")
        for name in ("config.json", "diffusion_pytorch_model.safetensors")}


ENTRY = textwrap.dedent("""\
    import torch
    from torch import nn


    class Eps(nn.Module):
        def __init__(self):
            super().__init__()
            torch.manual_seed(0)
            self.conv = nn.Conv2d(1, 1, 3, padding=1)
            self.embed = nn.Embedding(11, 1)

        def forward(self, x, t, y):
            return self.conv(x) * t.view(-1, 1, 1, 1) + self.embed(y).view(-1, 1, 1, 1)


    def make():
        return Eps(), {"image_shape": [1, 8, 8], "num_classes": 10}
    """)


@torch.no_grad()
def test_entry_point_eps_is_the_factorys_network(tmp_path, monkeypatch):
    package = tmp_path / "myeps"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "net.py").write_text(ENTRY)
    monkeypatch.syspath_prepend(str(tmp_path))
    loaded = load_model("py:myeps.net:make")
    import myeps.net  # the module as Python imports it

    net, meta = myeps.net.make()
    assert torch.equal(loaded.model(X, T, Y), net(X, T, Y))
    assert loaded.kind == "python" and loaded.meta["num_classes"] == 10
    assert loaded.meta["files"] == {"net.py": __import__("hashlib").sha256(
        ENTRY.encode()).hexdigest()}
    data = {str(p): p.read_bytes() for p in model_files("py:myeps.net:make")}
    assert load_model("py:myeps.net:make", data=data).sha256 == loaded.sha256


def test_api_load_model_returns_network_and_meta(diffusers_models):
    import cejobs

    net, meta = cejobs.load_model(diffusers_models["unet"])
    assert meta["kind"] == "diffusers" and meta["sha256"] == load_model(
        str(diffusers_models["unet"])).sha256
    assert net.num_classes == 10 and tuple(net.image_shape) == (1, 8, 8)


def _one_line_error(spec: str, uncond: str | None = None) -> str:
    with pytest.raises(CheckpointError) as info:
        load_model(spec, uncond)
    assert "\n" not in str(info.value)
    return str(info.value)


@pytest.mark.parametrize("change, words", [
    ({"prediction_type": "v_prediction"}, "prediction_type = 'v_prediction'"),
    ({"prediction_type": "sample"}, "prediction_type = 'sample'"),
    ({"beta_schedule": "scaled_linear"}, "beta_schedule = 'scaled_linear'"),
    ({"beta_end": 0.012}, "beta_end = 0.012"),
    ({"num_train_timesteps": 4000}, "num_train_timesteps = 4000"),
    ({"rescale_betas_zero_snr": True}, "rescale_betas_zero_snr = True"),
])
def test_scheduler_other_than_the_vp_sde_is_refused(tmp_path, change, words):
    folder = save_pipeline(tmp_path / "p", tiny_unet(11), {**DDPM_SCHEDULER, **change})
    assert words in _one_line_error(str(folder))


def test_refusals_are_one_line(diffusers_models, tmp_path):
    assert "download it elsewhere first" in _one_line_error("google/ddpm-cifar10-32")
    assert "model not found" in _one_line_error(str(tmp_path / "nothing"))
    (tmp_path / "empty").mkdir()
    assert "neither a diffusers" in _one_line_error(str(tmp_path / "empty"))
    (tmp_path / "net.pkl").write_bytes(b"\x80\x04N.")
    assert "cejobs never unpickles" in _one_line_error(str(tmp_path / "net.pkl"))
    pickled = tmp_path / "pickled"
    shutil.copytree(diffusers_models["unet"], pickled)
    (pickled / "diffusion_pytorch_model.safetensors").rename(
        pickled / "diffusion_pytorch_model.bin")
    assert "weights are a pickle" in _one_line_error(str(pickled))
    (pickled / "diffusion_pytorch_model.bin").unlink()
    assert "diffusion_pytorch_model.safetensors missing" in _one_line_error(str(pickled))
    assert "is unconditional" in _one_line_error(str(diffusers_models["uncond"]))
    fourier = tmp_path / "fourier"
    shutil.copytree(diffusers_models["unet"], fourier)
    config = json.loads((fourier / "config.json").read_text())
    (fourier / "config.json").write_text(json.dumps({**config, "time_embedding_type": "fourier"}))
    assert "time_embedding_type 'fourier'" in _one_line_error(str(fourier))
    assert "entry point is py:package.module:factory" in _one_line_error("py:bad spec")


@pytest.mark.parametrize("kind", ["diffusers", "pair"])
def test_fast_path_and_compiled_step_with_own_models(diffusers_models, kind):
    """The fast path (channels-last, noise on the device; the step traced by torch.compile's
    aot_eager backend) makes the eager sampler's CEs from a diffusers network and a pair."""
    import copy

    from cejobs.method.fastpath import FastOptions, FastSampler
    from cejobs.method.noise import CENoise
    from cejobs.method.sampler import sample_ce

    spec = ((str(diffusers_models["unet"]),) if kind == "diffusers" else
            (str(diffusers_models["cond"]), str(diffusers_models["uncond"])))
    net = load_model(*spec).model
    src, target, rep = torch.arange(10) // 5, torch.arange(10) % 10, torch.zeros(10).long()
    mu = torch.rand(10, 1, 8, 8, generator=torch.Generator().manual_seed(1)) * 2 - 1
    noise = CENoise(3, src, target, rep)
    ref = sample_ce(net, noise.latents(mu), mu, target, steps=4, randn_like=noise)
    for options in (FastOptions(compile=False),
                    FastOptions(compile=True, compile_backend="aot_eager")):
        fast = FastSampler(copy.deepcopy(net), "cpu", seed=3, steps=4, options=options,
                           log=lambda _m: None)
        out = fast.sample(mu, target, src, rep)
        assert fast.mode == ("compiled" if options.compile else "eager")
        # float32 rounding of channels-last convolutions, relative to this random net's scale
        assert torch.allclose(out, ref, atol=1e-5 * float(ref.abs().max()), rtol=0)
