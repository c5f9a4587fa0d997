"""`python -m cejobs.models convert edm`: its refusals, and its write/read round trip on a
stand-in for EDM's pickled network (EDM's code is not a dependency: the stand-in is cejobs'
own VPPrecond under EDM's class name, carrying `init_kwargs` as EDM's persistence does)."""

import pickle

import pytest
import torch

import cejobs.models.edm_convert as edm_convert
from cejobs.cli import exit_status, models_main
from cejobs.errors import CheckpointError, ConfigError
from cejobs.models import edm_unet
from cejobs.models.edm import build_precond, load_edm
from tests.edm_fixtures import golden, golden_network


class VPPrecond(edm_unet.VPPrecond):
    """Stands in for EDM's persistent VPPrecond: same class name, same `init_kwargs`."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.init_kwargs = dict(kwargs)


class EDMPrecond(torch.nn.Module):
    """Stands in for one of EDM's other preconditionings."""


def _pickle(tmp_path, obj, name="net.pkl"):
    path = tmp_path / name
    with open(path, "wb") as f:
        pickle.dump(obj, f)
    return path


@pytest.fixture
def edm_importable(monkeypatch):
    """Pretend EDM's code is importable (only the check; the stand-ins need none of it)."""
    monkeypatch.setattr(edm_convert, "EDM_MODULES", ())


def test_refuses_without_trust_flag(tmp_path, capsys):
    path = _pickle(tmp_path, {"ema": None})
    assert exit_status(models_main, ["convert", "edm", str(path), str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert err == (f"error: converting an EDM pickle runs the code inside it: pass "
                   f"--trust-pickle if you trust {path}\n")
    assert not (tmp_path / "out").exists()


def test_refuses_without_edm_code(tmp_path, monkeypatch):
    monkeypatch.setattr(edm_convert, "EDM_MODULES", ("cejobs_no_such_module_edm",))
    with pytest.raises(ConfigError, match="EDM's code is not importable"):
        edm_convert.convert_edm_pickle(tmp_path / "x.pkl", tmp_path / "out", trust_pickle=True)


def test_refuses_other_networks(tmp_path, edm_importable):
    path = _pickle(tmp_path, {"ema": EDMPrecond()})
    with pytest.raises(CheckpointError, match="holds EDMPrecond around NoneType; cejobs "
                                              "converts EDM's VP networks only"):
        edm_convert.convert_edm_pickle(path, tmp_path / "out", trust_pickle=True)


def test_refuses_a_file_that_is_not_a_pickle(tmp_path, edm_importable):
    path = tmp_path / "net.pkl"
    path.write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="not an EDM network pickle"):
        edm_convert.convert_edm_pickle(path, tmp_path / "out", trust_pickle=True)


def test_converts_and_loads(tmp_path, edm_importable, capsys):
    """pickle -> folder -> load_edm: the loaded eps-network is the pickled network's F."""
    tensors, _ = golden()
    kwargs, state = golden_network("cond")
    net = VPPrecond(**kwargs)
    net.load_state_dict(state)
    path = _pickle(tmp_path, {"ema": net, "loss_fn": None})
    out = tmp_path / "edm-cond"
    argv = ["convert", "edm", str(path), str(out), "--trust-pickle"]
    assert exit_status(models_main, argv) == 0
    assert capsys.readouterr().out == f"wrote {out}: EDM VP network, 3x8x8, 10 classes\n"
    eps, meta = load_edm(out)
    assert (meta["kind"], meta["num_classes"], meta["image_shape"]) == ("edm", 10, (3, 8, 8))
    reference = build_precond(kwargs, state, "golden")
    for key, value in reference.state_dict().items():
        assert torch.equal(eps.precond.state_dict()[key], value), key
    with torch.no_grad():
        got = eps(tensors["inputs.x"], tensors["inputs.t"], tensors["inputs.labels"])
    torch.testing.assert_close(got, tensors["cond.raw"], rtol=1e-5, atol=1e-6)
    assert exit_status(models_main, argv) == 2  # the folder holds a network already
