"""The compute-only CE maker: the sampler's CEs and distances, whatever its batching, and the
parameters a run config gives it."""

from __future__ import annotations

import torch

from cejobs.jobs.ce_maker import CEMaker
from cejobs.jobs.config import GenerateConfig
from cejobs.jobs.methods import CEParams
from cejobs.method.distances import l0_distance, l2_distance
from cejobs.method.noise import CENoise
from cejobs.method.params import RobustParams, SamplerParams
from cejobs.method.sampler import sample_ce, to_image_space, to_model_space
from cejobs.models import UNET_PRESETS, UNet


def _tiny_net() -> UNet:
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS["tiny"])
    for p in net.parameters():  # untrained but non-trivial outputs
        torch.nn.init.normal_(p, std=0.05)
    return net.eval()


@torch.no_grad()
def test_maker_makes_the_samplers_ces_in_any_batching():
    sources = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    index = torch.tensor([5, 7, 9])
    targets, replicates = torch.tensor([0, 1, 1]), torch.tensor([0, 0, 1])
    sampler = SamplerParams(method="gaussian", w=2.0, steps=6)
    # 9 CEs in batches of 4: each CE keeps its own noise (noise.py)
    params = CEParams(method="gaussian", seed=3, batch_size=4, sampler=sampler)
    batch = CEMaker(params, _tiny_net(), {"centered": True}, "cpu").make(
        sources, index, targets, replicates)

    src, target = index.repeat_interleave(3), targets.repeat(3)
    noise = CENoise(3, src, target, replicates.repeat(3))
    mu_img = sources.repeat_interleave(3, dim=0)
    mu = to_model_space(mu_img)
    ref = to_image_space(sample_ce(_tiny_net(), noise.latents(mu), mu, target, sampler,
                                   randn_like=noise))
    assert batch.x.shape == (3, 3, 1, 8, 8)
    torch.testing.assert_close(batch.x.view(9, 1, 8, 8), ref, atol=1e-6, rtol=0)
    torch.testing.assert_close(batch.l2.view(9), l2_distance(mu_img, ref), atol=1e-5, rtol=0)
    assert torch.equal(batch.l0.view(9), l0_distance(mu_img, batch.x.view(9, 1, 8, 8)))
    assert batch.extras == {} and batch.not_finite() == 0


def test_params_from_config_set_their_methods_only():
    params = CEParams.from_config(GenerateConfig(method="boltzmann-exact", w=3.0, steps=7,
                                                 precision="bf16", seed=11, batch_size=5))
    assert params.sampler == SamplerParams(method="boltzmann-exact", w=3.0, steps=7,
                                           net_dtype=torch.bfloat16)
    assert params.robust is None and (params.seed, params.batch_size) == (11, 5)
    robust = CEParams.from_config(GenerateConfig(method="robust", robust_max_steps=9))
    assert robust.sampler is None and robust.robust == RobustParams(max_steps=9)


def test_config_defaults_are_the_methods():
    config, sampler, robust = GenerateConfig(), SamplerParams(), RobustParams()
    assert (config.method, config.w, config.sigma_ce, config.steps) == \
        (sampler.method, sampler.w, sampler.sigma_ce, sampler.steps)
    assert (config.robust_step_size, config.robust_max_steps, config.robust_threshold) == \
        (robust.step_size, robust.max_steps, robust.threshold)
    assert CEParams.from_config(config).sampler == sampler
