"""Training commands on tiny presets: they run, record their metrics, and resume bit-identically."""

import numpy as np
import pytest
import torch

from cejobs.data import load_dataset
from cejobs.models.checkpoint import load_checkpoint
from functools import partial

from cejobs.cli import exit_status, train_main
from cejobs.train.classifier import accuracy, pgd_l2
from cejobs.train.common import stream_batch
from tests.conftest import run_module

run = partial(exit_status, train_main)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny nets gain nothing from threads, and oversubscribed cores slow them badly."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _diffusion(out, steps, *extra):
    args = ["diffusion", "--dataset", "digits", "--preset", "tiny", "--steps", str(steps), "--batch-size", "8",
            "--warmup", "2", "--ema", "0.9", "--save-every", "3", "--log-every", "2", "--no-progress",
            "--device", "cpu", "--out", str(out), *extra]
    assert run(args) == 0


def _state(path):
    return load_checkpoint(path).model.state_dict()


def _assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_diffusion_trains_and_resumes_bit_identically(tmp_path):
    _diffusion(tmp_path / "full.pt", 5)
    ck = load_checkpoint(tmp_path / "full.pt", expect_kind="diffusion")
    assert ck.arch == "unet" and ck.meta["centered"] is True and ck.meta["dataset"] == "digits"
    assert ck.meta["image_shape"] == [1, 8, 8] and ck.arch_kwargs["base_channels"] == 4
    assert ck.meta["metrics"]["steps"] == 5 and np.isfinite(ck.meta["metrics"]["train_loss"])
    assert ck.meta["train"]["lr"] == 2e-4 and ck.meta["train"]["label_drop"] == 0.3
    assert ck.meta["train"]["command"].startswith("python -m cejobs.train diffusion --dataset digits")
    assert ck.extra == {}  # the model file holds no training state

    _diffusion(tmp_path / "part.pt", 3)  # "interrupted" after the save at step 3
    _diffusion(tmp_path / "part.pt", 5, "--resume", str(tmp_path / "part.pt.resume.pt"))
    _assert_same_weights(_state(tmp_path / "full.pt"), _state(tmp_path / "part.pt"))  # EMA weights
    raw_full = load_checkpoint(tmp_path / "full.pt.resume.pt").extra
    raw_part = load_checkpoint(tmp_path / "part.pt.resume.pt").extra
    assert raw_full["step"] == raw_part["step"] == 5
    _assert_same_weights(raw_full["model"], raw_part["model"])  # raw weights too
    assert raw_full["recent_losses"] == raw_part["recent_losses"]


def test_diffusion_resume_refuses_other_settings(tmp_path, capsys):
    _diffusion(tmp_path / "a.pt", 3)
    resume = str(tmp_path / "a.pt.resume.pt")
    assert run(["diffusion", "--dataset", "digits", "--preset", "tiny", "--steps", "5", "--lr", "1e-3",
                "--batch-size", "8", "--warmup", "2", "--ema", "0.9", "--resume", resume,
                "--out", str(tmp_path / "a.pt"), "--no-progress"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "lr (file: 0.0002, now: 0.001)" in err and "\n" not in err
    assert run(["diffusion", "--dataset", "digits", "--preset", "tiny", "--steps", "3", "--batch-size", "8",
                "--warmup", "2", "--ema", "0.9", "--resume", resume, "--out", str(tmp_path / "a.pt"),
                "--no-progress"]) == 2
    assert "already at step 3" in capsys.readouterr().err
    assert run(["classifier", "--dataset", "digits", "--resume", resume, "--out", str(tmp_path / "c.pt")]) == 2
    assert "is a diffusion checkpoint, but a classifier checkpoint is needed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def small_npz(tmp_path_factory):
    """96 digits as an npz, so that classifier epochs take a fraction of a second."""
    digits = load_dataset("digits", split="train")
    path = tmp_path_factory.mktemp("npz") / "small.npz"
    np.savez(path, x=(digits.images(range(96)).numpy() * 255).round().astype(np.uint8), y=digits.labels[:96])
    return path


def _classifier(npz, out, epochs, *extra):
    args = ["classifier", "--dataset", str(npz), "--preset", "tiny", "--epochs", str(epochs), "--batch-size", "32",
            "--eps", "0.5", "--pgd-steps", "2", "--eval-steps", "2,3", "--augment", "crop-flip",
            "--save-every", "1", "--no-progress", "--device", "cpu", "--out", str(out), *extra]
    assert run(args) == 0


def test_classifier_trains_reports_and_resumes_bit_identically(small_npz, tmp_path):
    _classifier(small_npz, tmp_path / "full.pt", 2)
    ck = load_checkpoint(tmp_path / "full.pt", expect_kind="classifier")
    assert ck.arch == "wideresnet" and ck.arch_kwargs["dropout"] == 0.0  # robust: no dropout by default
    assert len(ck.arch_kwargs["input_mean"]) == 1 and 0 < ck.arch_kwargs["input_mean"][0] < 1
    m = ck.meta["metrics"]
    assert m["n"] == 96 and 0 <= m["clean_acc"] <= 1
    assert [(a["eps"], a["steps"]) for a in m["attacks"]] == [(0.5, 2), (0.5, 3)]
    assert m["attacks"][0]["step_size"] == pytest.approx(2.5 * 0.5 / 2)
    assert ck.meta["eps"] == 0.5 and ck.meta["train"]["augment"] == "crop-flip"

    _classifier(small_npz, tmp_path / "part.pt", 1)
    _classifier(small_npz, tmp_path / "part.pt", 2, "--resume", str(tmp_path / "part.pt.resume.pt"))
    _assert_same_weights(_state(tmp_path / "full.pt"), _state(tmp_path / "part.pt"))
    full, part = load_checkpoint(tmp_path / "full.pt"), load_checkpoint(tmp_path / "part.pt")
    assert full.meta["metrics"] == part.meta["metrics"]
    for k, v in full.model.named_buffers():  # BatchNorm running statistics too
        assert torch.equal(v, dict(part.model.named_buffers())[k]), k


def test_classifier_standard_defaults(small_npz, tmp_path):
    assert run(["classifier", "--dataset", str(small_npz), "--preset", "tiny", "--epochs", "1",
                "--batch-size", "48", "--save-every", "0", "--no-progress", "--device", "cpu",
                "--out", str(tmp_path / "s.pt")]) == 0
    ck = load_checkpoint(tmp_path / "s.pt")
    assert ck.arch_kwargs["dropout"] == 0.3 and ck.meta["metrics"]["attacks"] == []
    assert ck.meta["train"]["lr"] == 1e-3 and not (tmp_path / "s.pt.resume.pt").exists()


def test_classifier_linf_training_reports_linf_attacks(small_npz, tmp_path):
    out = tmp_path / "linf.pt"
    assert run(["classifier", "--dataset", str(small_npz), "--preset", "tiny", "--epochs", "1",
                "--batch-size", "48", "--eps", "0.1", "--threat", "linf", "--pgd-steps", "2",
                "--eval-steps", "3", "--save-every", "0", "--no-progress", "--device", "cpu",
                "--out", str(out)]) == 0
    ck = load_checkpoint(out)
    [attack] = ck.meta["metrics"]["attacks"]
    assert (attack["attack"], attack["eps"], attack["steps"]) == ("pgd-linf", 0.1, 3)
    assert ck.meta["train"]["threat"] == "linf"
    test = load_dataset(str(small_npz), split="test")
    expected = accuracy(ck.model, test, torch.device("cpu"), eps=0.1, steps=3, threat="linf")
    assert attack["acc"] == expected


def test_pgd_l2_stays_in_ball_and_box():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(16, 3))
    x = torch.rand(5, 1, 4, 4)
    y = torch.tensor([0, 1, 2, 0, 1])
    adv = pgd_l2(model, x, y, eps=0.5, steps=8)
    assert (adv - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert adv.min() >= 0 and adv.max() <= 1
    loss = torch.nn.functional.cross_entropy
    assert loss(model(adv), y) > loss(model(x), y)
    assert torch.equal(pgd_l2(model, x, y, eps=0.0), x)


def test_stream_batches_cover_each_epoch_once():
    batches = np.concatenate([stream_batch(7, 10, 4, s) for s in range(5)])  # 20 = two epochs
    assert sorted(batches[:10]) == list(range(10)) and sorted(batches[10:]) == list(range(10))
    assert not np.array_equal(batches[:10], batches[10:])
    assert np.array_equal(stream_batch(7, 10, 4, 3), batches[12:16])


def test_bad_flags_exit_2(capsys):
    assert run(["classifier", "--dataset", "digits", "--eps", "-1"]) == 2
    assert capsys.readouterr().err.strip() == "error: --eps must be >= 0 (got -1.0)"
    assert run(["diffusion", "--dataset", "cifar10", "--data-root", "/nonexistent"]) == 2
    assert "cifar10 not found: expected /nonexistent/cifar-10-batches-py" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        run(["diffusion", "--preset", "huge"])
    assert info.value.code == 2


def test_module_entry_point_help(capsys):
    r = run_module("cejobs.train", "diffusion", "--help")
    assert "--label-drop" in r.stdout and "(default: 0.3)" in r.stdout
    with pytest.raises(SystemExit):
        run(["classifier", "--help"])
    out = capsys.readouterr().out
    assert "--eps" in out and "(default: wrn-40-2)" in out and "(default: 100)" in out


def test_paper_attack_radius_by_dataset():
    """Tables 1-2 attack every model at one radius per dataset (eps = 0 included); other
    datasets default to the model's own training eps."""
    from cejobs.train.classifier import default_eval_eps

    assert default_eval_eps("cifar10", 0.0) == [0.5] and default_eval_eps("cifar10", 2.0) == [0.5]
    assert default_eval_eps("svhn", 0.0) == [0.2] and default_eval_eps("svhn", 0.4) == [0.2]
    assert default_eval_eps("digits", 0.0) == [] and default_eval_eps("digits", 1.0) == [1.0]


def test_diffusion_flips_cifar10_only_and_resumes_with_them(tmp_path):
    from cejobs.train.diffusion import DiffusionTrainConfig, flip_batch, uses_flips

    assert uses_flips(DiffusionTrainConfig(dataset="cifar10"))
    assert not uses_flips(DiffusionTrainConfig(dataset="svhn"))
    assert not uses_flips(DiffusionTrainConfig(dataset="digits"))
    assert uses_flips(DiffusionTrainConfig(dataset="digits", flip="on"))
    assert not uses_flips(DiffusionTrainConfig(dataset="cifar10", flip="off"))
    x = torch.arange(64 * 2 * 3, dtype=torch.float32).reshape(64, 1, 2, 3)
    assert flip_batch(x, 0, 7, False) is x
    out = flip_batch(x, 0, 7, True)
    flipped = (out == x.flip(-1)).flatten(1).all(1)
    assert ((out == x).flatten(1).all(1) ^ flipped).all()  # each image: itself or mirrored
    assert 0 < int(flipped.sum()) < 64
    assert torch.equal(out, flip_batch(x, 0, 7, True)) and not torch.equal(out, flip_batch(x, 0, 8, True))

    _diffusion(tmp_path / "full.pt", 5, "--flip", "on")
    _diffusion(tmp_path / "part.pt", 3, "--flip", "on")
    _diffusion(tmp_path / "part.pt", 5, "--flip", "on", "--resume", str(tmp_path / "part.pt.resume.pt"))
    _assert_same_weights(_state(tmp_path / "full.pt"), _state(tmp_path / "part.pt"))
    _diffusion(tmp_path / "plain.pt", 5)  # the flips change the training
    plain, flipped = _state(tmp_path / "plain.pt"), _state(tmp_path / "full.pt")
    assert any(not torch.equal(plain[k], flipped[k]) for k in plain)


@pytest.fixture(scope="module")
def ce_store(tmp_path_factory):
    from tests.ce_fixtures import write_ce_store

    path = tmp_path_factory.mktemp("ces") / "ces.zarr"
    write_ce_store(path)
    return path


def test_classifier_with_ces_learns_and_resumes_bit_identically(small_npz, ce_store, tmp_path,
                                                                 capsys):
    import re

    ces = ["--with-ces", str(ce_store), "--ce-fraction", "0.25", "--eps", "0", "--dropout", "0",
           "--augment", "none", "--lr", "0.01", "--batch-size", "16", "--eval-eps", "0.5"]
    _classifier(small_npz, tmp_path / "full.pt", 4, *ces)
    out = capsys.readouterr().out
    assert "120 CEs of" in out and "as 0.25 of each batch (labelled target)" in out
    losses = [float(v) for v in re.findall(r"epoch \d/4  loss ([\d.]+)", out)]
    assert len(losses) == 4 and losses[-1] < losses[0]
    ck = load_checkpoint(tmp_path / "full.pt")
    assert ck.meta["train"]["with_ces"] == str(ce_store) and ck.meta["train"]["ce_label"] == "target"

    _classifier(small_npz, tmp_path / "part.pt", 2, *ces)
    _classifier(small_npz, tmp_path / "part.pt", 4, *ces, "--resume", str(tmp_path / "part.pt.resume.pt"))
    _assert_same_weights(_state(tmp_path / "full.pt"), _state(tmp_path / "part.pt"))
    part = load_checkpoint(tmp_path / "part.pt")
    for k, v in ck.model.named_buffers():
        assert torch.equal(v, dict(part.model.named_buffers())[k]), k


def test_ce_mix_batches_hold_the_fraction_drawn_by_step(ce_store):
    from cejobs.ce_dataset import CEDataset
    from cejobs.train.ce_mixing import CEMix

    data = CEDataset(ce_store, select="all")
    mix = CEMix(str(ce_store), 0.25, "target", seed=0, batch_size=32, image_shape=(1, 8, 8),
                num_classes=10)
    assert (mix.per_batch, mix.real_batch, len(mix)) == (8, 24, len(data))
    x, y = torch.zeros(24, 1, 8, 8), torch.full((24,), -1)
    bx, by = mix.add(x, y, step=5)
    assert bx.shape == (32, 1, 8, 8) and (by[:24] == -1).all()
    again_x, again_y = mix.add(x, y, step=5)
    assert torch.equal(bx, again_x) and torch.equal(by, again_y)
    assert not torch.equal(mix.add(x, y, step=6)[0], bx)
    pick = [int(np.flatnonzero((data.images(np.arange(len(data))) == img).flatten(1).all(1))[0])
            for img in bx[24:]]
    assert by[24:].tolist() == data.targets[pick].tolist()
    assert len(set(pick)) == 8  # without replacement within a step
    assert mix.add(x[:6], y[:6], step=0)[1].shape == (8,)  # a short batch: 6 images, 2 CEs
    by_source = CEMix(str(ce_store), 0.25, "source", seed=0, batch_size=32,
                      image_shape=(1, 8, 8), num_classes=10)
    assert by_source.add(x, y, step=5)[1][24:].tolist() == data.source_labels[pick].tolist()


def test_with_ces_bad_input_exits_2(small_npz, ce_store, tmp_path, capsys):
    base = ["classifier", "--dataset", str(small_npz), "--preset", "tiny", "--epochs", "1",
            "--no-progress", "--device", "cpu", "--out", str(tmp_path / "c.pt")]
    assert run([*base, "--with-ces", str(tmp_path / "none.zarr")]) == 2
    assert "no cejobs store at" in capsys.readouterr().err
    assert run([*base, "--with-ces", str(ce_store), "--ce-fraction", "0.01",
                "--batch-size", "8"]) == 2
    assert "leaves no CEs or no training images" in capsys.readouterr().err
    assert run([*base, "--with-ces", str(ce_store), "--ce-fraction", "1"]) == 2


def test_ce_settings_are_identity_only_with_ces():
    """A run without CEs repeats the settings of resume files written before --with-ces."""
    from cejobs.train.classifier import ClassifierTrainConfig

    assert not {"with_ces", "ce_fraction", "ce_label"} & set(ClassifierTrainConfig().identity())
    with_ces = ClassifierTrainConfig(with_ces="runs/a.zarr").identity()
    assert (with_ces["with_ces"], with_ces["ce_fraction"], with_ces["ce_label"]) == (
        "runs/a.zarr", 0.25, "target")
