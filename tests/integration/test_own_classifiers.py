"""`evaluate` and `--method robust` with torchvision, timm and RobustBench-layout classifiers
(random weights saved here) on digits: the store holds exactly what the wrapped models give,
the spec and file hash are recorded, and a changed file under the same name is refused."""

import json

import numpy as np
import pytest
import torch

import cejobs
from cejobs.cli import evaluate_main, exit_status, generate_main
from cejobs.method.robust import robust_ce
from cejobs.models import robustbench
from cejobs.models.checkpoint import file_sha256
from cejobs.models.classifiers import load_classifier
from cejobs.store.store import CEStore

timm = pytest.importorskip("timm")
save_file = pytest.importorskip("safetensors.torch").save_file
torchvision = pytest.importorskip("torchvision")
FAST = ["--backend", "local", "--threads", "1", "--no-progress"]
DIGITS = (1, 8, 8)


@pytest.fixture
def tiny_robustbench(monkeypatch):
    """A small WideResNet of RobustBench's definition, registered as digits/L2/Tiny."""
    monkeypatch.setitem(robustbench.ROBUSTBENCH_MODELS, ("digits", "L2", "Tiny"),
                        robustbench.RobustBenchModel(
                            lambda: robustbench.RBWideResNet(10, 1, 10, in_channels=1),
                            DIGITS, 10))


@pytest.fixture(scope="module")
def specs(tmp_path_factory):
    """name -> spec of three classifiers with seeded random weights."""
    root = tmp_path_factory.mktemp("own")
    torch.manual_seed(0)
    tm = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    save_file(tm.state_dict(), root / "timm.safetensors")
    tv = torchvision.models.get_model("mobilenet_v3_small", weights=None, num_classes=10)
    tv.features[0][0] = torch.nn.Conv2d(1, 16, 3, 2, 1, bias=False)
    torch.save(tv.state_dict(), root / "tv.pt")
    rb = robustbench.RBWideResNet(10, 1, 10, in_channels=1)
    (root / "rb" / "digits" / "L2").mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in rb.state_dict().items()}},
               root / "rb" / "digits" / "L2" / "Tiny.pt")
    return {"tm": f"timm:test_resnet@{root / 'timm.safetensors'};mean=0.5;std=0.5",
            "tv": f"torchvision:mobilenet_v3_small@{root / 'tv.pt'}",
            "rb": f"robustbench:Tiny@{root / 'rb'}"}


@pytest.fixture(scope="module")
def store(tiny_models, tmp_path_factory):
    path = tmp_path_factory.mktemp("store") / "clean.zarr"
    assert generate_main(["--store", str(path), "--split", "test", "--sources", "4",
                          "--model", str(tiny_models["diffusion"]), "--steps", "2",
                          "--per-class", "1", "--shard-size", "2", "--method", "gaussian",
                          *FAST]) == 0
    return path


def _softmax(model, x):
    with torch.no_grad():
        return torch.softmax(model(torch.from_numpy(x)), dim=-1).numpy()


def test_evaluate_with_library_classifiers(store, specs, tiny_robustbench, tmp_path, capsys):
    out = tmp_path / "eval"
    flags = [f"--classifier={n}={s}" for n, s in specs.items()]
    assert evaluate_main(["--store", str(store), *flags, "--out", str(out), "--no-figures",
                          *FAST]) == 0
    opened = CEStore.open(store)
    source_x, ce_x = opened.read_rows("source/x"), opened.read_rows("ce/x")
    summary = json.loads((out / "summary.json").read_text())["stores"][0]
    for name, spec in specs.items():
        loaded = load_classifier(spec, DIGITS, 10)
        want = _softmax(loaded.model, source_x)
        np.testing.assert_allclose(opened.read_rows(f"eval/{name}/source_prob"), want,
                                   rtol=1e-5, atol=1e-6)
        n, k = ce_x.shape[:2]
        want_ce = _softmax(loaded.model, ce_x.reshape(n * k, *DIGITS)).reshape(n, k, 10)
        np.testing.assert_allclose(opened.read_rows(f"eval/{name}/ce_prob"), want_ce,
                                   rtol=1e-5, atol=1e-6)
        assert summary["info"]["classifiers"][name] == {"spec": spec,
                                                     "sha256": file_sha256(loaded.path)}
        assert opened.group_attrs(f"eval/{name}")["spec"] == spec
        assert f"classifier {name}: `{spec}`" in (out / "report.md").read_text()


def test_changed_weights_file_is_refused(store, specs, tmp_path, capsys):
    spec = specs["tm"]
    path = spec.split("@", 1)[1].split(";")[0]
    original = open(path, "rb").read()
    assert evaluate_main(["--store", str(store), f"--classifier=tmx={spec}", "--out",
                          str(tmp_path / "a"), "--no-figures", *FAST]) == 0
    torch.manual_seed(5)
    net = timm.create_model("test_resnet", pretrained=False, num_classes=10, in_chans=1)
    try:
        save_file(net.state_dict(), path)
        capsys.readouterr()
        assert exit_status(evaluate_main, ["--store", str(store), f"--classifier=tmx={spec}",
                                           "--out", str(tmp_path / "b"), "--no-figures",
                                           *FAST]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and "already has eval/tmx" in err[0]
        assert "give it another name" in err[0]
    finally:
        open(path, "wb").write(original)


@pytest.mark.parametrize("name", ["tm", "tv", "rb"])
def test_robust_method_with_library_classifiers(name, specs, tiny_robustbench, tmp_path):
    path = tmp_path / "robust.zarr"
    assert generate_main(["--store", str(path), "--split", "test", "--sources", "2",
                          "--method", "robust", "--classifier", specs[name],
                          "--robust-max-steps", "3", "--per-class", "1", "--shard-size", "2",
                          *FAST]) == 0
    opened = CEStore.open(path)
    loaded = load_classifier(specs[name], DIGITS, 10)
    assert opened.identity["classifier_sha256"] == loaded.sha256
    x = torch.from_numpy(opened.read_rows("source/x"))
    target = torch.from_numpy(opened.read_rows("ce/target").astype(np.int64))
    n, k = target.shape
    want = robust_ce(loaded.model, x.repeat_interleave(k, 0), target.reshape(-1),
                     max_steps=3)
    np.testing.assert_allclose(opened.read_rows("ce/x").reshape(n * k, *DIGITS),
                               want.x.numpy(), atol=1e-6)
    assert np.array_equal(opened.read_rows("ce/robust_steps").reshape(-1), want.steps.numpy())


def test_api_load_classifier_is_the_workers_model(specs):
    model = cejobs.load_classifier(specs["tm"], dataset="digits")
    x = torch.rand(3, *DIGITS)
    with torch.no_grad():
        assert torch.equal(model(x), load_classifier(specs["tm"], DIGITS, 10).model(x))
