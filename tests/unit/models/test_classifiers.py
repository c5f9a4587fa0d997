"""Library classifiers by spec (cejobs.models.classifiers): the wrapped model computes the
library model on normalised inputs; RobustBench's file layout and key conventions; one-line
errors. Weights are random, saved by the tests; nothing reaches the network."""

import hashlib

import pytest
import torch

from cejobs.errors import CheckpointError, ConfigError
from cejobs.models import robustbench
from cejobs.models.checkpoint import file_sha256
from cejobs.models.classifiers import (classifier_file, load_classifier,
                                       parse_classifier_spec)

timm = pytest.importorskip("timm")
save_file = pytest.importorskip("safetensors.torch").save_file
torchvision = pytest.importorskip("torchvision")
DIGITS = (1, 8, 8)


def test_timm_model_equals_the_library_model_on_normalised_inputs(tmp_path):
    torch.manual_seed(0)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1).eval()
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    loaded = load_classifier(f"timm:test_resnet@{tmp_path / 'w.safetensors'}", DIGITS, 10)
    cfg_mean = torch.tensor(net.pretrained_cfg["mean"]).mean()  # RGB config, grey images
    cfg_std = torch.tensor(net.pretrained_cfg["std"]).mean()
    assert loaded.meta["mean"] == [cfg_mean.item()] and loaded.meta["std"] == [cfg_std.item()]
    x = torch.rand(4, *DIGITS)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net((x - cfg_mean) / cfg_std))
    assert loaded.sha256 == file_sha256(tmp_path / "w.safetensors")
    assert loaded.model.image_shape == DIGITS and loaded.model.num_classes == 10


def test_torchvision_model_takes_the_datasets_channels_and_declared_normalisation(tmp_path):
    torch.manual_seed(1)
    net = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10)
    net.features[0][0] = torch.nn.Conv2d(1, 16, 3, 2, 1, bias=False)  # grey input
    net.eval()
    torch.save({"state_dict": net.state_dict()}, tmp_path / "w.pt")
    spec = f"torchvision:mobilenet_v3_small@{tmp_path / 'w.pt'};mean=0.5;std=0.25"
    loaded = load_classifier(spec, DIGITS, 10)
    x = torch.rand(4, *DIGITS)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net((x - 0.5) / 0.25))
    assert loaded.meta["spec"] == spec and loaded.meta["mean"] == [0.5]


def _tiny_robustbench(monkeypatch):
    """A small WideResNet of RobustBench's definition, registered as digits/L2/Tiny."""
    entry = robustbench.RobustBenchModel(
        lambda: robustbench.RBWideResNet(depth=10, widen_factor=1, in_channels=1),
        DIGITS, 10, mean=(0.25,), std=(0.5,))
    monkeypatch.setitem(robustbench.ROBUSTBENCH_MODELS, ("digits", "L2", "Tiny"), entry)
    return entry


def test_robustbench_layout_and_key_conventions(tmp_path, monkeypatch):
    entry = _tiny_robustbench(monkeypatch)
    torch.manual_seed(2)
    net = entry.build().eval()
    path = tmp_path / "models" / "digits" / "L2" / "Tiny.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in net.state_dict().items()}}, path)
    loaded = load_classifier(f"robustbench:Tiny@{tmp_path / 'models'}")
    x = torch.rand(4, *DIGITS)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net((x - 0.25) / 0.5))
    assert loaded.path == path and loaded.sha256 == file_sha256(path)
    assert classifier_file(f"robustbench:Tiny@{tmp_path / 'models'}") == path


def test_robustbench_missing_file_says_where_it_must_be(tmp_path):
    with pytest.raises(CheckpointError) as err:
        load_classifier(f"robustbench:Standard@{tmp_path};threat=Linf")
    assert str(err.value) == (f"RobustBench weights not found: put Standard.pt at "
                              f"{tmp_path}/cifar10/Linf/Standard.pt (cejobs never downloads)")


def test_robustbench_standard_is_wide_resnet_28_10():
    """RobustBench's "Standard" CIFAR-10 model: WRN-28-10, 36,479,194 parameters."""
    net = robustbench.ROBUSTBENCH_MODELS[("cifar10", "Linf", "Standard")].build()
    assert sum(p.numel() for p in net.parameters()) == 36_479_194
    assert net.fc.out_features == 10 and net.conv1.in_channels == 3


def test_bad_specs_are_one_line_errors(tmp_path):
    assert parse_classifier_spec("runs/c.pt").library == "cejobs"
    with pytest.raises(ConfigError, match="must look like timm:ARCH@WEIGHTS"):
        parse_classifier_spec("timm:resnet18")
    with pytest.raises(ConfigError, match="unknown option 'scale=2'"):
        parse_classifier_spec("timm:resnet18@w.pt;scale=2")
    with pytest.raises(CheckpointError, match="timm weights file not found"):
        load_classifier(f"timm:test_resnet@{tmp_path / 'none.pt'}", DIGITS, 10)
    torch.save({"fc.weight": torch.zeros(3, 3)}, tmp_path / "other.pt")
    with pytest.raises(CheckpointError, match="weights do not fit test_resnet"):
        load_classifier(f"timm:test_resnet@{tmp_path / 'other.pt'}", DIGITS, 10)
    with pytest.raises(ConfigError, match="needs the dataset's image shape"):
        load_classifier(f"timm:test_resnet@{tmp_path / 'other.pt'}")
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    save_file(net.state_dict(), tmp_path / "w.safetensors")
    with pytest.raises(ConfigError, match="std has 2 values for 1 input channels"):
        load_classifier(f"timm:test_resnet@{tmp_path / 'w.safetensors'};std=1,2", DIGITS, 10)
    with pytest.raises(ConfigError, match="std must be > 0"):
        load_classifier(f"timm:test_resnet@{tmp_path / 'w.safetensors'};std=0", DIGITS, 10)


def test_driver_bytes_load_without_the_file(tmp_path, monkeypatch):
    """A Ray worker gets the driver's bytes and path: the file need not exist there."""
    entry = _tiny_robustbench(monkeypatch)
    torch.manual_seed(3)
    net = entry.build().eval()
    path = tmp_path / "models" / "digits" / "L2" / "Tiny.pt"
    path.parent.mkdir(parents=True)
    torch.save(net.state_dict(), path)
    spec = f"robustbench:Tiny@{tmp_path / 'models'}"
    found = classifier_file(spec)
    data = found.read_bytes()
    path.unlink()
    loaded = load_classifier(spec, data=data, path=found)
    x = torch.rand(2, *DIGITS)
    with torch.no_grad():
        assert torch.equal(loaded.model(x), net((x - 0.25) / 0.5))
    assert loaded.path == found and loaded.sha256 == hashlib.sha256(data).hexdigest()
