"""GroupNorm + SiLU in one pass over memory: a Triton kernel for the fast path on CUDA.

The U-Net's ResBlocks apply SiLU(GroupNorm(x)) 45 times per forward (score_sde
`ResnetBlockDDPM`). Compiled, inductor reads each activation twice (statistics, then
normalisation) and writes it once. This kernel holds a whole (image, group) in registers, so
it reads once and writes once:

    y = silu((x - mean_g) / sqrt(var_g + eps) * weight_c + bias_c)

with the statistics in fp32 (two passes over the registers, not E[x^2] - E[x]^2), and y in
x's dtype. Any memory layout works (strides are arguments), so channels-last costs nothing.
Groups larger than MAX_GROUP_NUMEL elements use PyTorch instead.

Nothing is built at import: `build_kernel()` makes the kernel once, and `use_fused_norm_act`
hands it to the network's blocks before compilation (the fast path's `triton_norm` option).
Under torch.compile it is traced as a user-defined Triton kernel, CUDA graphs included. Off
CUDA, or for groups that do not fit, the blocks use F.silu(F.group_norm(...)).
"""

from __future__ import annotations

import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

MAX_GROUP_NUMEL = 16384  # channels per group x pixels, padded to powers of two


def reference_group_norm_silu(x: Tensor, norm: nn.GroupNorm) -> Tensor:
    return F.silu(norm(x))


@functools.cache
def build_kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def group_norm_silu_kernel(
        x_ptr, w_ptr, b_ptr, y_ptr,
        groups, cpg, hw, eps,
        sxb, sxc, sxp, syb, syc, syp,  # strides of x and y seen as (B, C, H*W)
        BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr, SILU: tl.constexpr,
    ):
        pid = tl.program_id(0)
        b = pid // groups
        c = (pid % groups) * cpg + tl.arange(0, BLOCK_C)
        p = tl.arange(0, BLOCK_P)
        cmask = tl.arange(0, BLOCK_C) < cpg
        mask = cmask[:, None] & (p[None, :] < hw)
        x = tl.load(x_ptr + b * sxb + c[:, None] * sxc + p[None, :] * sxp, mask=mask,
                    other=0.0).to(tl.float32)
        n = cpg * hw
        mean = tl.sum(tl.sum(x, axis=1), axis=0) / n
        d = tl.where(mask, x - mean, 0.0)
        var = tl.sum(tl.sum(d * d, axis=1), axis=0) / n
        rstd = 1.0 / tl.sqrt(var + eps)
        w = tl.load(w_ptr + c, mask=cmask, other=1.0).to(tl.float32)
        bias = tl.load(b_ptr + c, mask=cmask, other=0.0).to(tl.float32)
        y = d * rstd * w[:, None] + bias[:, None]
        if SILU:
            y = y * tl.sigmoid(y)
        tl.store(y_ptr + b * syb + c[:, None] * syc + p[None, :] * syp,
                 y.to(y_ptr.dtype.element_ty), mask=mask)

    return group_norm_silu_kernel


def _next_pow2(n: int) -> int:
    return 1 << max(0, (n - 1).bit_length())


def triton_fits(x: Tensor, norm: nn.GroupNorm) -> bool:
    """Whether the kernel handles this call (a CUDA tensor, or any with TRITON_INTERPRET=1)."""
    if norm.weight is None or x.dim() != 4:
        return False
    cpg, hw = x.shape[1] // norm.num_groups, x.shape[2] * x.shape[3]
    return _next_pow2(cpg) * _next_pow2(hw) <= MAX_GROUP_NUMEL


def triton_group_norm_silu(x: Tensor, norm: nn.GroupNorm, kernel, silu: bool = True,
                           out_dtype: torch.dtype | None = None) -> Tensor:
    """The kernel, for x (B, C, H, W) in any layout; y has x's layout and `out_dtype`."""
    bsz, c, h, w = x.shape
    groups = norm.num_groups
    cpg, hw = c // groups, h * w
    y = torch.empty_like(x, dtype=out_dtype or x.dtype)
    block_c, block_p = _next_pow2(cpg), _next_pow2(hw)
    warps = 4 if block_c * block_p <= 2048 else 8 if block_c * block_p <= 8192 else 16
    # a (B, C, H, W) tensor in NCHW or NHWC memory has one stride for the H*W pixels: stride(3)
    kernel[(bsz * groups,)](
        x, norm.weight, norm.bias, y, groups, cpg, hw, norm.eps,
        x.stride(0), x.stride(1), x.stride(3), y.stride(0), y.stride(1), y.stride(3),
        BLOCK_C=block_c, BLOCK_P=block_p, SILU=silu, num_warps=warps,
    )
    return y


def flat_pixels(x: Tensor) -> bool:
    """H*W pixels reachable with one stride (NCHW- or NHWC-contiguous)."""
    return x.stride(2) == x.shape[3] * x.stride(3)


def group_norm_silu(x: Tensor, norm: nn.GroupNorm, kernel) -> Tensor:
    """SiLU(GroupNorm(x)), by the Triton kernel on CUDA when it fits, else by PyTorch.

    Under autocast, PyTorch runs GroupNorm in fp32 and the next convolution rounds its input
    to bf16; the kernel computes in fp32 and writes bf16 directly when autocast is on."""
    if x.is_cuda and triton_fits(x, norm) and flat_pixels(x):
        out = torch.get_autocast_dtype("cuda") if torch.is_autocast_enabled("cuda") else None
        return triton_group_norm_silu(x, norm, kernel, out_dtype=out)
    return reference_group_norm_silu(x, norm)


def use_fused_norm_act(net: nn.Module) -> int:
    """Give every block of `net` with a `fused_kernel` slot the kernel; returns how many."""
    kernel = build_kernel()
    count = 0
    for m in net.modules():
        if hasattr(m, "fused_kernel"):
            m.fused_kernel = kernel
            count += 1
    return count
