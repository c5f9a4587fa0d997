"""Our PGD (cejobs.method.attacks) against the Adversarial Robustness Toolbox's PGD, and the
threat model's constraints."""

import numpy as np
import pytest
import torch
from torch import nn

from cejobs.method.attacks import pgd


def _model_and_data(lo=0.0, hi=1.0):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.Tanh(), nn.Flatten(),
                          nn.Linear(4 * 8 * 8, 10)).eval()
    x = lo + (hi - lo) * torch.rand(12, 1, 8, 8)
    y = torch.arange(12) % 10
    return model, x, y


def _art_pgd(model, x, y, eps, steps, step_size, norm):
    art_classifiers = pytest.importorskip("art.estimators.classification")
    art_attacks = pytest.importorskip("art.attacks.evasion")
    clf = art_classifiers.PyTorchClassifier(model, loss=nn.CrossEntropyLoss(),
                                            input_shape=(1, 8, 8), nb_classes=10,
                                            clip_values=(0.0, 1.0), device_type="cpu")
    attack = art_attacks.ProjectedGradientDescentPyTorch(
        clf, norm=norm, eps=eps, eps_step=step_size, max_iter=steps, num_random_init=0,
        batch_size=len(x), verbose=False)
    onehot = np.eye(10, dtype=np.float32)[y.numpy()]
    return torch.from_numpy(attack.generate(x.numpy(), y=onehot))


def test_linf_pgd_equals_art():
    model, x, y = _model_and_data()
    ours = pgd(model, x, y, eps=0.1, steps=10, step_size=0.025, threat="linf")
    theirs = _art_pgd(model, x, y, 0.1, 10, 0.025, np.inf)
    assert (ours - x).abs().max() <= 0.1 + 1e-6 and ours.min() >= 0 and ours.max() <= 1
    # float32 sums in another order can flip the sign of a near-zero gradient entry: compare
    # per pixel, allowing none of those to differ by more than rounding
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_l2_pgd_equals_art_inside_the_pixel_box():
    """Images in [0.3, 0.7] with eps 0.5: no pixel reaches 0 or 1, so the clip is inactive and
    ART's order (step, clip, project) and ours (step, project, clip) give the same points."""
    model, x, y = _model_and_data(0.3, 0.7)
    ours = pgd(model, x, y, eps=0.5, steps=8, step_size=0.15, threat="l2")
    theirs = _art_pgd(model, x, y, 0.5, 8, 0.15, 2)
    assert (ours - x).flatten(1).norm(dim=1).max() <= 0.5 + 1e-5
    assert ours.min() > 0 and ours.max() < 1
    assert torch.allclose(ours, theirs, atol=1e-5)


def test_linf_pgd_raises_the_loss_within_the_box():
    model, x, y = _model_and_data()
    adv = pgd(model, x, y, eps=8 / 255, steps=8, threat="linf")
    assert (adv - x).abs().max() <= 8 / 255 + 1e-6
    loss = nn.functional.cross_entropy
    assert loss(model(adv), y) > loss(model(x), y)
    with pytest.raises(ValueError, match="threat"):
        pgd(model, x, y, eps=0.1, threat="l1")
