"""The CE sampler with an EDM VP network (cejobs.models.edm) as its eps-network."""

import torch

from cejobs.method.sampler import sample_ce
from cejobs.models.edm import EDMEps, build_precond
from tests.edm_fixtures import golden_network


def test_short_run_gives_finite_ces_that_follow_the_network():
    """A few guided steps on 8x8x3 data: finite CEs of the latents' shape, and the network
    matters (another network's weights give other CEs from the same noise)."""
    outs = []
    for name in ("cond", "uncond"):
        kwargs, state = golden_network(name)
        eps = EDMEps(build_precond(kwargs, state, name))
        gen = torch.Generator().manual_seed(0)
        latents = torch.randn(4, 3, 8, 8, generator=gen)
        mu = torch.rand(4, 3, 8, 8, generator=gen) * 2 - 1
        target = torch.tensor([0, 1, 2, 9])
        noise = [torch.randn(4, 3, 8, 8, generator=gen) for _ in range(5)]
        out = sample_ce(eps, latents, mu, target, steps=5, net_dtype=torch.float32,
                        randn_like=lambda i, x: noise[i])
        assert out.shape == latents.shape
        assert torch.isfinite(out).all()
        outs.append(out)
    assert (outs[0] - outs[1]).abs().max() > 1e-3
