"""The shipped digits models load and hit their documented figures (docs/models.md) on the test split."""

import pytest
import torch

from cejobs.data import load_dataset
from cejobs.models.checkpoint import load_checkpoint
from cejobs.method.sde import VPSDE
from cejobs.train.classifier import accuracy
from tests.conftest import REPO

DIGITS = REPO / "data" / "digits"

# docs/models.md, "Shipped models": clean and L2 PGD-8 test accuracy (%) at the model's own eps.
CLASSIFIERS = {
    "classifier-standard.pt": dict(eps=0.0, clean=96.00, pgd8=None),
    "classifier-l2-eps0.25.pt": dict(eps=0.25, clean=97.56, pgd8=91.33),
    "classifier-l2-eps0.5.pt": dict(eps=0.5, clean=98.22, pgd8=72.89),
    "classifier-l2-eps1.0.pt": dict(eps=1.0, clean=95.33, pgd8=38.00),
}
DIFFUSION_TEST_LOSS = 0.0549  # docs/models.md: denoising loss on the test split (see _denoising_loss)


@pytest.fixture(scope="module")
def test_split():
    return load_dataset("digits", split="test")


def test_shipped_files_together_under_20_mb():
    files = sorted(DIGITS.glob("*.pt"))
    assert {f.name for f in files} == {"diffusion.pt", *CLASSIFIERS}, "only models ship (no *.resume.pt)"
    assert sum(f.stat().st_size for f in files) < 20e6


@pytest.mark.parametrize("name", list(CLASSIFIERS))
def test_shipped_classifier_accuracy(name, test_split):
    doc = CLASSIFIERS[name]
    ck = load_checkpoint(DIGITS / name, expect_kind="classifier")
    assert ck.meta["image_shape"] == [1, 8, 8] and ck.meta["num_classes"] == 10
    assert ck.meta["dataset"] == "digits" and ck.meta["eps"] == doc["eps"]
    recorded = ck.meta["metrics"]
    assert 100 * recorded["clean_acc"] == pytest.approx(doc["clean"], abs=0.01)
    torch.manual_seed(0)
    clean = 100 * accuracy(ck.model, test_split, torch.device("cpu"))
    assert clean == pytest.approx(doc["clean"], abs=1.0)
    if doc["eps"] == 0:
        assert clean >= 95.0
    else:
        pgd = 100 * accuracy(ck.model, test_split, torch.device("cpu"), eps=doc["eps"], steps=8)
        assert pgd == pytest.approx(doc["pgd8"], abs=1.0)


def _denoising_loss(model, x0: torch.Tensor, y: torch.Tensor) -> float:
    """mean ||eps_theta(x_t, t, y) - z||^2 over the images at t = 0.1, 0.2, ..., 0.9, seeded noise."""
    sde, g, losses = VPSDE(), torch.Generator().manual_seed(0), []
    m = 2 * x0 - 1
    with torch.no_grad():
        for t_value in torch.arange(1, 10) / 10:
            t = torch.full((len(m),), float(t_value))
            z = torch.randn(m.shape, generator=g)
            x_t = sde.alpha(t)[:, None, None, None] * m + sde.sigma(t)[:, None, None, None] * z
            losses.append(float((model(x_t, t, y) - z).square().mean()))
    return sum(losses) / len(losses)


def test_shipped_diffusion_model(test_split):
    ck = load_checkpoint(DIGITS / "diffusion.pt", expect_kind="diffusion")
    assert ck.arch == "unet" and ck.meta["centered"] is True and ck.meta["image_shape"] == [1, 8, 8]
    assert ck.model.class_emb.num_embeddings == 11
    y = torch.as_tensor(test_split.labels)
    loss = _denoising_loss(ck.model, test_split.images(), y)
    assert loss == pytest.approx(DIFFUSION_TEST_LOSS, rel=0.02)
    loss_null = _denoising_loss(ck.model, test_split.images(), torch.full_like(y, 10))
    assert loss < loss_null  # the label helps: the model is class-conditional
