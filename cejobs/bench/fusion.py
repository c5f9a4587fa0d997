"""`python -m cejobs.bench fusion`: which kernels torch.compile emits for the U-Net's
GroupNorm -> SiLU -> conv under bf16 autocast (docs/performance.md, "Fast path")."""

from __future__ import annotations

import argparse
import re

import torch

from cejobs.bench.common import bench_device, device_name


def bench_fusion(args) -> dict:
    """The generated kernels' names, and whether one kernel holds both the GroupNorm and the
    SiLU (statistics, normalisation, SiLU and the bf16 cast in one pass)."""
    import torch.nn.functional as F
    from torch._inductor.utils import run_and_get_code

    device = bench_device(args.device)
    torch.manual_seed(0)
    c = args.channels
    norm = torch.nn.GroupNorm(min(32, c // 4), c, eps=1e-6).to(device)
    conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device)

    def block(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return conv(F.silu(norm(x)))

    x = torch.randn(args.batch, c, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(block), x)
    names = sorted(set(re.findall(r"\b((?:triton|cpp)_\w*fused\w*)", "\n".join(code))))
    return dict(bench="fusion", device=device_name(device), shape=list(x.shape), kernels=names,
                group_norm_and_silu_in_one_kernel=any("group_norm" in n and "silu" in n
                                                      for n in names),
                torch=torch.__version__)


def add_parser(sub) -> None:
    p = sub.add_parser("fusion", help="kernels torch.compile emits for GroupNorm + SiLU + conv",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=128, help="paper U-Net: 128 at 32x32")
    p.add_argument("--size", type=int, default=32)
    p.set_defaults(run=bench_fusion)
