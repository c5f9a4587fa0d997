"""EDM's VP networks: cejobs' implementation against EDM's recorded outputs, the eps adapter
against the denoiser formula, the converted folder's round trip and its refusals."""

import json

import pytest
import torch

from cejobs.errors import CheckpointError
from cejobs.method.sde import VPSDE
from cejobs.models.checkpoint import file_sha256
from cejobs.models.edm import EDMEps, build_precond, is_edm_folder, load_edm, write_edm_folder
from cejobs.models.edm_unet import CIFAR10_VP_KWARGS, VPPrecond
from tests.edm_fixtures import golden, golden_network

NAMES = ("cond", "uncond")


def _eps(name: str) -> EDMEps:
    kwargs, state = golden_network(name)
    return EDMEps(build_precond(kwargs, state, name))


def _one_hot(labels: torch.Tensor, label_dim: int):
    return torch.eye(11, 10)[labels] if label_dim else None


@pytest.mark.parametrize("name", NAMES)
def test_network_matches_edm_reference(name):
    """cejobs' SongUNet and VPPrecond reproduce EDM's outputs on the same weights. The
    recorded F values are O(0.3) and D values O(10); both run the same float32 operations in a
    possibly different summation order (another CPU's kernels), a relative error of a few
    2^-24 per layer over about 20 layers: rtol 1e-5 bounds it with room, and is far below
    what a wrong wiring changes (O(1) relative)."""
    tensors, _ = golden()
    eps = _eps(name)
    labels = _one_hot(tensors["inputs.labels"], eps.num_classes)
    with torch.no_grad():
        raw = eps.precond.model(tensors["inputs.x"], 999 * tensors["inputs.t"], labels)
        denoised = eps.precond(tensors["inputs.x_denoised"], tensors["inputs.sigma"], labels)
    torch.testing.assert_close(raw, tensors[f"{name}.raw"], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(denoised, tensors[f"{name}.denoised"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", NAMES)
def test_adapter_is_the_network_with_mapped_inputs(name):
    """eps(x_t, t, y) = F(x_t, 999 t, one_hot(y)) exactly (the same call), and so EDM's F."""
    tensors, _ = golden()
    eps = _eps(name)
    x, t, labels = tensors["inputs.x"], tensors["inputs.t"], tensors["inputs.labels"]
    with torch.no_grad():
        out = eps(x, t, labels)
        direct = eps.precond.model(x, 999 * t, _one_hot(labels, eps.num_classes))
    assert torch.equal(out, direct)
    torch.testing.assert_close(out, tensors[f"{name}.raw"], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("label_dim, parameters, entries", [(10, 55_735_299, 427),
                                                            (0, 55_733_891, 425)])
def test_cifar10_vp_network_has_edm_size(label_dim, parameters, entries):
    """EDM's code builds these CIFAR10 VP networks with the same parameter counts and
    state_dict entries (counted with EDM's training/networks.py when the golden file was
    made; the names and shapes of all entries were equal too)."""
    with torch.device("meta"):
        net = VPPrecond(label_dim=label_dim, **CIFAR10_VP_KWARGS)
    assert sum(p.numel() for p in net.parameters()) == parameters
    assert len(net.state_dict()) == entries


def test_edm_alpha_is_cejobs_vp_alpha():
    """EDM's alpha(t) = 1 / sqrt(1 + sigma(t)^2) is cejobs' VP SDE alpha_t (beta_d = 19.9 =
    beta_max - beta_min), and sigma(t) = sigma_t / alpha_t; float64, so 1e-12 is rounding."""
    precond = _eps("cond").precond
    sde = VPSDE()
    t = torch.linspace(1e-3, 1.0, 101, dtype=torch.float64)
    sigma = precond.sigma(t)
    torch.testing.assert_close(1 / (1 + sigma**2).sqrt(), sde.alpha(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(sigma, sde.sigma(t) / sde.alpha(t), rtol=1e-12, atol=0)
    torch.testing.assert_close(precond.sigma_inv(sigma), t, rtol=1e-12, atol=0)


@pytest.mark.parametrize("name", NAMES)
def test_adapter_equals_denoiser_formula(name):
    """eps = (x_hat - D(x_hat; sigma(t), y)) / sigma(t), x_hat = x_t / alpha_t, in float64.
    The two differ only by rounding: c_in x_hat vs x_t and sigma_inv(sigma(t)) vs t (relative
    ~1e-15), and the formula's cancellation, |x_hat| 2^-53 / sigma <= 1e-13 here; 1e-10 is
    that with room."""
    tensors, _ = golden()
    eps = _eps(name).double()
    sde = VPSDE()
    x = tensors["inputs.x"].double()
    t = tensors["inputs.t"].double()
    labels = tensors["inputs.labels"]
    with torch.no_grad():
        out = eps(x, t, labels)
        x_hat = x / sde.alpha(t)[:, None, None, None]
        sigma = eps.precond.sigma(t)
        denoised = eps.precond(x_hat, sigma, eps.class_labels(labels, torch.float64))
        formula = (x_hat - denoised) / sigma[:, None, None, None]
    assert out.dtype == torch.float64
    torch.testing.assert_close(out, formula, rtol=1e-10, atol=1e-10)


def test_labels_map_to_one_hot_and_null_to_zeros():
    eps = _eps("cond")
    rows = eps.class_labels(torch.tensor([0, 3, 10]), torch.float32)
    expected = torch.zeros(3, 10)
    expected[0, 0] = expected[1, 3] = 1
    assert torch.equal(rows, expected)
    assert eps.num_classes == 10
    assert _eps("uncond").num_classes == 0
    assert _eps("uncond").class_labels(torch.tensor([0]), torch.float32) is None


def test_folder_round_trip(tmp_path):
    tensors, _ = golden()
    kwargs, state = golden_network("cond")
    folder = tmp_path / "edm-cond"
    assert not is_edm_folder(folder)
    write_edm_folder(folder, kwargs, state)
    assert is_edm_folder(folder)
    eps, meta = load_edm(folder)
    assert not eps.training
    assert meta == {
        "kind": "edm",
        "image_shape": (3, 8, 8),
        "num_classes": 10,
        "label_dropout": 0.0,
        "centered": True,
        "sha256": {"edm.json": file_sha256(folder / "edm.json"),
                   "model.safetensors": file_sha256(folder / "model.safetensors")},
    }
    assert json.loads((folder / "edm.json").read_text())["init_kwargs"] == kwargs
    with torch.no_grad():
        out = eps(tensors["inputs.x"], tensors["inputs.t"], tensors["inputs.labels"])
    torch.testing.assert_close(out, tensors["cond.raw"], rtol=1e-5, atol=1e-6)
    with pytest.raises(CheckpointError, match="already holds an EDM network"):
        write_edm_folder(folder, kwargs, state)


def _folder(tmp_path, kwargs=None, state=None):
    base_kwargs, base_state = golden_network("uncond")
    folder = tmp_path / "net"
    write_edm_folder(folder, base_kwargs, base_state)
    if kwargs is not None:
        config = json.loads((folder / "edm.json").read_text())
        config["init_kwargs"] = {**base_kwargs, **kwargs}
        (folder / "edm.json").write_text(json.dumps(config))
    return folder


def test_refuses_a_missing_folder(tmp_path):
    with pytest.raises(CheckpointError, match="not an EDM network folder"):
        load_edm(tmp_path / "nothing")


def test_refuses_a_pickle_as_weights(tmp_path):
    folder = _folder(tmp_path)
    torch.save({"a": torch.zeros(1)}, folder / "model.safetensors")
    with pytest.raises(CheckpointError, match="not a safetensors file"):
        load_edm(folder)


@pytest.mark.parametrize("change, message", [
    ({"embedding_type": "fourier"}, "embedding_type='fourier' is not supported"),
    ({"encoder_type": "residual"}, "encoder_type='residual' is not supported"),
    ({"model_type": "DhariwalUNet"}, "model_type 'DhariwalUNet' is not supported"),
    ({"model_channels": 16}, "weights do not fit the network"),
    ({"future_option": 1}, "unknown SongUNet arguments"),
])
def test_refuses_unsupported_configs(tmp_path, change, message):
    with pytest.raises(CheckpointError, match=message):
        load_edm(_folder(tmp_path, kwargs=change))


def test_refuses_a_foreign_json(tmp_path):
    folder = _folder(tmp_path)
    (folder / "edm.json").write_text(json.dumps({"_class_name": "UNet2DModel"}))
    with pytest.raises(CheckpointError, match="not an EDM network config"):
        load_edm(folder)
