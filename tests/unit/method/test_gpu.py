"""GPU checks: they need a CUDA device, so they skip on CPU-only machines (CI) with that reason.

Run on a GPU machine: python -m pytest -m gpu
"""

import pytest
import torch

from cejobs.models import UNET_PRESETS, UNet
from cejobs.method.noise import CENoise
from cejobs.method.sampler import sample_ce, to_image_space

pytestmark = pytest.mark.gpu  # skipped without CUDA (tests/conftest.py)


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


@torch.no_grad()
def test_fast_path_with_cuda_graphs_matches_the_sampler():
    """fastpath.FastSampler: whole step compiled, replayed as a CUDA graph, noise on the GPU."""
    from cejobs.method.fastpath import FastSampler

    b = 12
    src, tgt, rep = _keys(b)
    mu = (torch.rand(b, 1, 8, 8) * 2 - 1).cuda()
    noise = CENoise(3, src, tgt, rep)
    ref = to_image_space(sample_ce(_net("cuda"), noise.latents(mu), mu, tgt.cuda(), steps=20,
                                   randn_like=noise))
    messages = []
    fast = FastSampler(_net("cuda"), "cuda", seed=3, steps=20, log=messages.append)
    out = to_image_space(fast.sample(mu, tgt, src, rep))
    assert fast.mode == "compiled+cudagraphs", messages
    assert (out - ref).abs().max() < 1e-3
    # a shorter batch is padded and replays the same graph; each CE keeps its noise
    out = to_image_space(fast.sample(mu[:5], tgt[:5], src[:5], rep[:5]))
    assert (out - ref[:5]).abs().max() < 1e-3


@torch.no_grad()
def test_triton_group_norm_silu_kernel_on_gpu():
    from cejobs.models.fused import build_kernel, group_norm_silu

    torch.manual_seed(0)
    norm = torch.nn.GroupNorm(32, 384, eps=1e-6).cuda()  # 12 channels per group, 32x32
    torch.nn.init.normal_(norm.weight, 1.0, 0.3)
    x = (torch.randn(4, 384, 32, 32, device="cuda") * 2 + 0.5)
    x = x.contiguous(memory_format=torch.channels_last)
    ref = torch.nn.functional.silu(norm(x))
    assert (group_norm_silu(x, norm, build_kernel()) - ref).abs().max() < 1e-4
    with torch.autocast("cuda", dtype=torch.bfloat16):
        y = group_norm_silu(x.bfloat16(), norm, build_kernel())
    assert y.dtype == torch.bfloat16
    assert ((y.float() - ref).abs() / (ref.abs() + 1)).max() < 2 ** -6


@torch.no_grad()
def test_fast_path_with_triton_norm_matches_the_sampler():
    from cejobs.method.fastpath import FastOptions, FastSampler

    b = 12
    src, tgt, rep = _keys(b)
    mu = (torch.rand(b, 1, 8, 8) * 2 - 1).cuda()
    noise = CENoise(3, src, tgt, rep)
    ref = to_image_space(sample_ce(_net("cuda"), noise.latents(mu), mu, tgt.cuda(), steps=20,
                                   randn_like=noise))
    messages = []
    fast = FastSampler(_net("cuda"), "cuda", seed=3, steps=20, log=messages.append,
                       options=FastOptions(triton_norm=True))
    assert fast.net.fused_kernel is not None, messages
    out = to_image_space(fast.sample(mu, tgt, src, rep))
    assert fast.mode == "compiled+cudagraphs", messages
    assert (out - ref).abs().max() < 1e-3
