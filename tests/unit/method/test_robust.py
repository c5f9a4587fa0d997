"""Robust-classifier CEs (the paper's baseline) and the distances, on analytic classifiers."""

import torch
from torch import nn

from cejobs.method.distances import l0_distance, l2_distance
from cejobs.method.robust import robust_ce


class Linear(nn.Module):
    """logits = W x.flatten() with a fixed W: p_target rises steadily along its gradient."""

    def __init__(self, scale=1.0, classes=3, numel=16):
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(torch.randn(classes, numel, generator=g) * scale)

    def forward(self, x):
        return x.flatten(1) @ self.w.T


class Capped(nn.Module):
    """p_target can never reach 0.9: its logit is bounded by 0.1."""

    def forward(self, x):
        s = torch.tanh(x.flatten(1).sum(1, keepdim=True))
        return torch.cat([0.1 * s, torch.zeros_like(s), torch.zeros_like(s)], dim=1)


def _x(b=5):
    return torch.rand(b, 1, 4, 4, generator=torch.Generator().manual_seed(1))


def test_stops_at_threshold_exactly():
    clf, x = Linear(), _x()
    target = torch.tensor([0, 1, 2, 0, 1])
    r = robust_ce(clf, x, target)
    p = torch.softmax(clf(r.x), 1)[torch.arange(5), target]
    assert r.reached.all() and (p >= 0.9).all()
    assert (r.steps > 0).all() and (r.steps < 200).all()
    for i in range(5):  # one step fewer: still below the threshold
        s = int(r.steps[i])
        before = robust_ce(clf, x[i : i + 1], target[i : i + 1], max_steps=s - 1)
        assert not before.reached.any() and int(before.steps) == s - 1
        p_before = torch.softmax(clf(before.x), 1)[0, target[i]]
        assert p_before < 0.9


def test_already_confident_takes_no_step():
    clf = Linear(scale=50.0)
    x = _x()
    target = clf(x).argmax(1)
    r = robust_ce(clf, x, target)
    assert (r.steps == 0).all() and r.reached.all() and torch.equal(r.x, x)


def test_cap_and_range():
    x = _x(3)
    r = robust_ce(Capped(), x, torch.zeros(3, dtype=torch.long), max_steps=200)
    assert (r.steps == 200).all() and not r.reached.any()
    assert r.x.min() >= 0 and r.x.max() <= 1
    # every step moves at most 0.05 in L2 (exactly 0.05 before clipping)
    assert ((r.x - x).flatten(1).norm(dim=1) <= 0.05 * 200 + 1e-5).all()
    one = robust_ce(Capped(), x, torch.zeros(3, dtype=torch.long), max_steps=1)
    moved = (one.x - x).flatten(1).norm(dim=1)
    assert (moved <= 0.05 + 1e-6).all() and (moved > 0.01).all()
    # a strong pull saturates pixels at the box, never beyond
    far = robust_ce(Linear(scale=0.05), x, torch.zeros(3, dtype=torch.long), step_size=5.0,
                    max_steps=20, threshold=0.99)
    assert far.x.min() >= 0 and far.x.max() <= 1 and ((far.x == 0) | (far.x == 1)).any()


def test_distances():
    x = torch.zeros(2, 1, 2, 2)
    x_ce = torch.tensor([[[[0.3, 0.4], [0.0, 0.0]]], [[[0.01, 0.03], [0.02, -0.5]]]])
    torch.testing.assert_close(l2_distance(x, x_ce), torch.tensor([0.5, (0.01**2 + 0.03**2 + 0.02**2 + 0.25) ** 0.5]))
    # |diff| > 0.02 counts: 2 of 4, then 0.03 and 0.5 (0.02 itself does not)
    torch.testing.assert_close(l0_distance(x, x_ce), torch.tensor([0.5, 0.5]))
    # broadcasting a source against its K CEs
    k = torch.stack([x_ce[0], x_ce[0], x_ce[0]])[None]  # (1, 3, 1, 2, 2)
    torch.testing.assert_close(l2_distance(x[:1, None], k), torch.full((1, 3), 0.5))
