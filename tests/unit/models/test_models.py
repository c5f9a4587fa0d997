"""Networks (parameter counts, shapes, null label, golden outputs) and the checkpoint format."""

import pickle

import pytest
import torch

from cejobs.models import MODEL_CLASSES, UNET_PRESETS, WRN_PRESETS, UNet, WideResNet
from cejobs.models.checkpoint import (
    FORMAT,
    CheckpointError,
    LoadedCheckpoint,
    file_sha256,
    load_checkpoint,
    save_checkpoint,
)


def _params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def _seeded(cls, kwargs, seed=0):
    torch.manual_seed(seed)
    return cls(**kwargs).eval()


def test_model_classes_table():
    assert MODEL_CLASSES == {"unet": UNet, "wideresnet": WideResNet}


def test_paper_unet_has_35_7m_parameters():
    n = _params(UNet(**UNET_PRESETS["paper"]))
    assert abs(n - 35.7e6) / 35.7e6 < 0.01, n
    assert n == 35_751_939  # DDPM's CIFAR10 net (35.7M) plus 11 x 512 class-embedding rows


def test_wrn_40_2_has_2_2m_parameters():
    n = _params(WideResNet(**WRN_PRESETS["wrn-40-2"]))
    assert n == 2_243_546


def test_small_presets_sizes():
    assert _params(UNet(**UNET_PRESETS["digits"])) == 437_281
    assert _params(UNet(**UNET_PRESETS["tiny"])) < 15_000
    assert _params(WideResNet(**WRN_PRESETS["digits"])) == 303_418


@pytest.mark.parametrize("preset", ["digits", "tiny"])
def test_unet_forward_shape_and_attributes(preset):
    net = UNet(**UNET_PRESETS[preset]).eval()
    assert net.num_classes == 10 and net.image_shape == (1, 8, 8)
    x = torch.randn(3, 1, 8, 8)
    eps = net(x, torch.rand(3), torch.tensor([0, 5, 10]))
    assert eps.shape == x.shape and eps.dtype == torch.float32


def test_unet_paper_forward_shape():
    net = UNet(**{**UNET_PRESETS["paper"], "base_channels": 32}).eval()  # same topology, narrower
    assert net.image_shape == (3, 32, 32)
    assert net(torch.randn(2, 3, 32, 32), torch.rand(2), torch.tensor([3, 10])).shape == (2, 3, 32, 32)


def test_unet_null_label_row_and_label_dependence():
    net = _seeded(UNet, UNET_PRESETS["tiny"])
    assert net.class_emb.num_embeddings == net.num_classes + 1  # last row: the null label
    x, t = torch.randn(2, 1, 8, 8), torch.full((2,), 0.5)
    with torch.no_grad():
        out_null = net(x, t, torch.full((2,), 10))
        out_3 = net(x, t, torch.full((2,), 3))
        net.class_emb.weight[10] += 1.0  # the null row is its own, learnable embedding
        out_null2 = net(x, t, torch.full((2,), 10))
        assert torch.equal(net(x, t, torch.full((2,), 3)), out_3)
    assert not torch.allclose(out_null, out_3)
    assert not torch.allclose(out_null, out_null2)
    assert net.class_emb.weight.requires_grad


def test_unet_zero_init_outputs_zero():
    net = UNet(**UNET_PRESETS["digits"]).eval()
    assert torch.count_nonzero(net(torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 2]))) == 0


def test_unet_bf16_autocast_runs():
    net = _seeded(UNet, UNET_PRESETS["tiny"])
    x, t, y = torch.randn(2, 1, 8, 8), torch.rand(2), torch.tensor([1, 10])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = net(x, t, y)
    assert torch.allclose(out.float(), net(x, t, y), atol=0.05)


def test_unet_golden_output():
    net = _seeded(UNet, UNET_PRESETS["tiny"])
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 1, 8, 8, generator=g)
    with torch.no_grad():
        eps = net(x, torch.tensor([0.25, 0.9]), torch.tensor([3, 10]))
    got = eps[:, 0, 2, :4].flatten().tolist() + [float(eps.mean())]
    assert got == pytest.approx(UNET_GOLDEN, abs=1e-5)


def test_wrn_forward_shape_and_normalisation():
    net = _seeded(WideResNet, {**WRN_PRESETS["tiny"], "input_mean": 0.3, "input_std": 0.2})
    assert net.num_classes == 10 and net.image_shape == (1, 8, 8)
    assert net.input_mean.flatten().tolist() == pytest.approx([0.3])
    assert "input_mean" not in net.state_dict()  # constants live in the constructor arguments
    assert net(torch.rand(4, 1, 8, 8)).shape == (4, 10)
    rgb = WideResNet(depth=10, widen_factor=1, in_channels=3, input_mean=(0.4, 0.5, 0.6)).eval()
    assert rgb(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    with pytest.raises(ValueError, match="input_mean"):
        WideResNet(depth=10, in_channels=3, input_mean=(0.1, 0.2))
    with pytest.raises(ValueError, match="6n"):
        WideResNet(depth=12)


def test_wrn_golden_output():
    net = _seeded(WideResNet, WRN_PRESETS["tiny"])
    x = torch.rand(2, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        logits = net(x)
    assert logits[0].tolist() + [float(logits[1].sum())] == pytest.approx(WRN_GOLDEN, abs=1e-5)


# ----------------------------------------------------------------------------- checkpoints
def _save_tiny_unet(path, **extra):
    net = _seeded(UNet, UNET_PRESETS["tiny"])
    save_checkpoint(path, net, kind="diffusion", arch="unet", arch_kwargs=UNET_PRESETS["tiny"],
                    meta={"dataset": "digits", "metrics": {"loss": 0.1}, "train": {"steps": 3}}, **extra)
    return net


def test_checkpoint_round_trip(tmp_path):
    path = tmp_path / "d.pt"
    net = _save_tiny_unet(path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == FORMAT and raw["kind"] == "diffusion" and raw["arch"] == "unet"
    assert set(raw) == {"format", "kind", "arch", "arch_kwargs", "state_dict", "meta"}

    ck = load_checkpoint(path, expect_kind="diffusion")
    assert isinstance(ck, LoadedCheckpoint) and not ck.model.training
    assert ck.meta["image_shape"] == [1, 8, 8] and ck.meta["num_classes"] == 10
    assert ck.meta["centered"] is True and ck.meta["metrics"] == {"loss": 0.1}
    assert ck.sha256 == file_sha256(path) and len(ck.sha256) == 64
    x, t, y = torch.randn(3, 1, 8, 8), torch.rand(3), torch.tensor([0, 4, 10])
    with torch.no_grad():
        assert torch.equal(ck.model(x, t, y), net(x, t, y))
    assert not list(tmp_path.glob(".*tmp*"))  # atomic write left nothing behind


def test_checkpoint_round_trip_classifier_with_extra(tmp_path):
    net = _seeded(WideResNet, {**WRN_PRESETS["tiny"], "input_mean": (0.25,), "input_std": (0.3,)})
    kwargs = {**WRN_PRESETS["tiny"], "input_mean": (0.25,), "input_std": (0.3,)}
    save_checkpoint(tmp_path / "c.pt", net, kind="classifier", arch="wideresnet", arch_kwargs=kwargs,
                    meta={"dataset": "digits"}, extra={"step": 7, "state": torch.arange(3)})
    ck = load_checkpoint(tmp_path / "c.pt", expect_kind="classifier")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(ck.model(x), net(x))
    assert ck.extra["step"] == 7 and ck.extra["state"].tolist() == [0, 1, 2]
    assert "centered" not in ck.meta


def test_save_rejects_non_plain_meta(tmp_path):
    net = _seeded(UNet, UNET_PRESETS["tiny"])
    with pytest.raises(TypeError, match="plain types"):
        save_checkpoint(tmp_path / "x.pt", net, kind="diffusion", arch="unet", arch_kwargs=UNET_PRESETS["tiny"],
                        meta={"train": {"torch": torch.__version__}})  # a str subclass
    with pytest.raises(ValueError, match="kind"):
        save_checkpoint(tmp_path / "x.pt", net, kind="score", arch="unet", arch_kwargs={}, meta={})
    assert not (tmp_path / "x.pt").exists()


def test_checkpoint_error_missing_file(tmp_path):
    with pytest.raises(CheckpointError, match="checkpoint not found: .*nope.pt"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
def test_checkpoint_error_not_a_checkpoint(tmp_path):
    (tmp_path / "text.pt").write_text("hello")
    with pytest.raises(CheckpointError, match="not a cejobs checkpoint"):
        load_checkpoint(tmp_path / "text.pt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="not a cejobs checkpoint"):
        load_checkpoint(tmp_path / "other.pt")
    with open(tmp_path / "pickle.pt", "wb") as f:  # arbitrary pickles are refused (weights_only)
        pickle.dump({"format": FORMAT, "obj": _Unsafe()}, f)
    with pytest.raises(CheckpointError, match="not a cejobs checkpoint"):
        load_checkpoint(tmp_path / "pickle.pt")


class _Unsafe:
    pass


def test_checkpoint_error_wrong_kind(tmp_path):
    _save_tiny_unet(tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="is a diffusion checkpoint, but a classifier checkpoint is needed"):
        load_checkpoint(tmp_path / "d.pt", expect_kind="classifier")


def _edit(path, **changes):
    raw = torch.load(path, weights_only=True)
    raw.update(changes)
    torch.save(raw, path)
    return raw


def test_checkpoint_error_unknown_arch(tmp_path):
    _save_tiny_unet(tmp_path / "d.pt")
    _edit(tmp_path / "d.pt", arch="resnet")
    with pytest.raises(CheckpointError, match="unknown architecture 'resnet'"):
        load_checkpoint(tmp_path / "d.pt")


def test_checkpoint_error_state_dict_does_not_fit(tmp_path):
    _save_tiny_unet(tmp_path / "d.pt")
    _edit(tmp_path / "d.pt", arch_kwargs={**UNET_PRESETS["tiny"], "base_channels": 8})
    with pytest.raises(CheckpointError, match="weights do not fit unet.*wrong shape") as info:
        load_checkpoint(tmp_path / "d.pt")
    assert "\n" not in str(info.value)
    raw = _edit(tmp_path / "d.pt", arch_kwargs=UNET_PRESETS["tiny"])
    raw["state_dict"].pop("conv_out.bias")
    torch.save(raw, tmp_path / "d.pt")
    with pytest.raises(CheckpointError, match="1 missing: conv_out.bias"):
        load_checkpoint(tmp_path / "d.pt")
    _edit(tmp_path / "d.pt", arch_kwargs={"no_such_argument": 1})
    with pytest.raises(CheckpointError, match="cannot build unet"):
        load_checkpoint(tmp_path / "d.pt")


# Computed once from the seeded tiny presets (torch 2.14.1, CPU); they pin the architectures.
UNET_GOLDEN = [-0.126645, -0.330769, -0.085321, -0.268958, 0.398836, -0.010454, -0.20946, -0.186714,
               -55.473953 / 128]
WRN_GOLDEN = [-0.082319, 0.083382, 0.019137, 0.101362, -0.059978, 0.068292, -0.044446, 0.103495, -0.011686,
              -0.023779, 0.078755]
