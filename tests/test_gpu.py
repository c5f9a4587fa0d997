"""GPU checks: they need a CUDA device, so they skip on CPU-only machines (CI) with that reason.

Run on a GPU machine: python -m pytest tests/test_gpu.py
"""

import pytest
import torch

from cejobs.models import UNET_PRESETS, UNet
from cejobs.method.noise import CENoise
from cejobs.method.sampler import sample_ce, to_image_space

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(),
                                reason="needs a CUDA device (GPU-only check)")


def _net(device):
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS["tiny"])
    for p in net.parameters():
        torch.nn.init.normal_(p, std=0.05)
    return net.to(device).eval()


def _keys(b):
    return torch.arange(b) // 4, torch.arange(b) % 10, torch.arange(b) % 2


def test_noise_is_the_same_on_gpu_and_cpu():
    src, tgt, rep = _keys(16)
    like = torch.empty(16, 3, 32, 32)
    cpu = CENoise(5, src, tgt, rep)
    gpu = CENoise(5, src, tgt, rep)
    assert torch.equal(cpu.latents(like), gpu.latents(like.cuda()).cpu())
    # Philox words are exact integers; Box-Muller's log/cos may differ by an ulp in float64
    assert torch.allclose(cpu(7, like), gpu(7, like.cuda()).cpu(), atol=1e-6, rtol=0)


@torch.no_grad()
def test_sampler_on_gpu_matches_cpu():
    b = 12
    src, tgt, rep = _keys(b)
    mu = torch.rand(b, 1, 8, 8) * 2 - 1
    outs = []
    for device in ("cpu", "cuda"):
        noise = CENoise(3, src, tgt, rep)
        lat = noise.latents(mu.to(device))
        out = sample_ce(_net(device), lat, mu.to(device), tgt.to(device), steps=50,
                        randn_like=noise)
        outs.append(to_image_space(out).cpu())
    assert (outs[0] - outs[1]).abs().max() < 1e-3


@torch.no_grad()
def test_bf16_network_on_gpu_stays_close_to_fp32():
    b = 12
    src, tgt, rep = _keys(b)
    mu = (torch.rand(b, 1, 8, 8) * 2 - 1).cuda()
    outs = {}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        noise = CENoise(3, src, tgt, rep)
        out = sample_ce(_net("cuda"), noise.latents(mu), mu, tgt.cuda(), steps=50,
                        randn_like=noise, net_dtype=dtype)
        assert out.dtype == torch.float32
        outs[name] = to_image_space(out)
    diff = (outs["bf16"] - outs["fp32"]).abs()
    assert torch.isfinite(outs["bf16"]).all() and diff.mean() < 0.02
