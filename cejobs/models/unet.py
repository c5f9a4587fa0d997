"""The class-conditional score U-Net: DDPM's CIFAR10 network (Ho et al. 2020; score_sde `ddpm.py`)
with a class embedding added to the time embedding and a learnable null label (paper sec. 3).

It predicts the noise eps_theta(x_t, t, y) of the VP SDE (docs/math.md). Inputs are in model
space (m = 2x - 1 for the centered models we train), t is continuous in [0, 1] and is embedded as
t * 999, as score_sde does for DDPM networks, and y = num_classes is the null label.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _group_norm(channels: int, max_groups: int) -> nn.GroupNorm:
    """GroupNorm with min(max_groups, channels // 4) groups (score_sde), rounded down to a divisor."""
    groups = max(1, min(max_groups, channels // 4))
    while channels % groups:
        groups -= 1
    return nn.GroupNorm(groups, channels, eps=1e-6)


def at_least_fp32(x: Tensor) -> Tensor:
    """x in float32, or in float64 when it already is (float64 reference runs)."""
    return x if x.dtype == torch.float64 else x.float()


def timestep_embedding(t: Tensor, dim: int) -> Tensor:
    """DDPM's sinusoidal embedding (score_sde `layers.get_timestep_embedding`) of (B,) times."""
    half = dim // 2
    t = at_least_fp32(t)
    freqs = torch.exp(torch.arange(half, dtype=t.dtype, device=t.device) * (-math.log(10000.0) / (half - 1)))
    args = t[:, None] * freqs[None, :]
    emb = torch.cat([torch.sin(args), torch.cos(args)], dim=1)
    return F.pad(emb, (0, 1)) if dim % 2 else emb


def _norm_silu(norm: nn.GroupNorm, x: Tensor, kernel) -> Tensor:
    if kernel is None:
        return F.silu(norm(x))
    from cejobs.models.fused import group_norm_silu

    return group_norm_silu(x, norm, kernel)


class ResBlock(nn.Module):
    """DDPM residual block (score_sde `ResnetBlockDDPM`): norm, act, conv, + time/class, norm, act,
    dropout, conv; a 1x1 shortcut when the width changes."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, dropout: float, max_groups: int):
        super().__init__()
        self.norm0 = _group_norm(in_channels, max_groups)
        self.conv0 = nn.Conv2d(in_channels, out_channels, 3, padding=1)
        self.emb = nn.Linear(emb_channels, out_channels)
        self.norm1 = _group_norm(out_channels, max_groups)
        self.dropout = nn.Dropout(dropout)
        self.conv1 = nn.Conv2d(out_channels, out_channels, 3, padding=1)
        self.skip = nn.Conv2d(in_channels, out_channels, 1) if in_channels != out_channels else None
        self.fused_kernel = None  # a one-pass GroupNorm+SiLU kernel (models/fused.py), on CUDA

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(_norm_silu(self.norm0, x, self.fused_kernel))
        h = h + self.emb(F.silu(emb))[:, :, None, None]
        h = self.conv1(self.dropout(_norm_silu(self.norm1, h, self.fused_kernel)))
        return (x if self.skip is None else self.skip(x)) + h


class AttnBlock(nn.Module):
    """Self-attention over pixels (score_sde `AttnBlock`); logits and softmax in fp32 (EDM AttentionOp)."""

    def __init__(self, channels: int, max_groups: int, num_heads: int = 1, sdpa: bool = False):
        super().__init__()
        if channels % num_heads:
            raise ValueError(f"attention: {channels} channels do not split into {num_heads} heads")
        self.num_heads = num_heads
        self.sdpa = sdpa  # F.scaled_dot_product_attention (the fast path turns it on)
        self.norm = _group_norm(channels, max_groups)
        self.qkv = nn.Conv2d(channels, 3 * channels, 1)
        self.proj = nn.Conv2d(channels, channels, 1)

    def forward(self, x: Tensor) -> Tensor:
        if self.sdpa:
            return self._forward_sdpa(x)
        b, c, h, w = x.shape
        q, k, v = self.qkv(self.norm(x)).reshape(b * self.num_heads, 3, c // self.num_heads, h * w).unbind(1)
        logits = torch.einsum("nci,ncj->nij", at_least_fp32(q), at_least_fp32(k)) / math.sqrt(q.shape[1])
        weights = logits.softmax(dim=2).to(v.dtype)
        out = torch.einsum("nij,ncj->nci", weights, v).reshape(b, c, h, w)
        return x + self.proj(out)

    def _forward_sdpa(self, x: Tensor) -> Tensor:
        """The same attention through SDPA, tokens (b, heads, h*w, d) with d contiguous.

        In channels-last memory the qkv conv's output already is (b, h*w, 3c): q, k and v are
        views, no copy. The flash and memory-efficient kernels keep the softmax statistics in
        fp32 (as EDM's AttentionOp asks) while q, k, v stay bf16; the math kernel in fp32 is
        the einsum path up to rounding.
        """
        b, c, h, w = x.shape
        n, d = self.num_heads, c // self.num_heads
        # channels are ordered (head, q/k/v, d), as the einsum path's reshape reads them
        qkv = self.qkv(self.norm(x)).permute(0, 2, 3, 1).reshape(b, h * w, n, 3, d)
        q, k, v = qkv.permute(3, 0, 2, 1, 4).unbind(0)  # each (b, n, h*w, d)
        out = F.scaled_dot_product_attention(q, k, v)
        out = out.permute(0, 2, 1, 3).reshape(b, h, w, c).permute(0, 3, 1, 2)
        return x + self.proj(out)


class Downsample(nn.Module):
    """Stride-2 3x3 conv with DDPM's asymmetric (0, 1, 0, 1) padding."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.pad(x, (0, 1, 0, 1)))


class Upsample(nn.Module):
    """Nearest-neighbour x2, then a 3x3 conv."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: Tensor) -> Tensor:
        return self.conv(F.interpolate(x, scale_factor=2.0, mode="nearest"))


class UNet(nn.Module):
    """eps_theta(x, t, y): DDPM's U-Net, class-conditional with a null label (index num_classes)."""

    def __init__(
        self,
        image_channels: int = 3,  # C of the images
        image_size: int = 32,  # H = W of the images
        num_classes: int = 10,  # labels 0..num_classes-1; num_classes itself is the null label
        base_channels: int = 128,  # channels at the first resolution (DDPM's ch)
        channel_mult: tuple[int, ...] = (1, 2, 2, 2),  # width multiplier per resolution; halve H, W between them
        num_res_blocks: int = 2,  # residual blocks per resolution in the encoder (decoder: one more)
        attn_resolutions: tuple[int, ...] = (16,),  # resolutions with self-attention after each residual block
        dropout: float = 0.1,  # dropout inside the residual blocks
        num_heads: int = 1,  # attention heads (DDPM: 1)
        max_groups: int = 32,  # GroupNorm groups, fewer when channels // 4 is smaller
        zero_init: bool = True,  # zero-init the last conv of each residual branch and the output (DDPM)
        cpu_channels_last: bool = True,  # on CPU, run channels-last (oneDNN's NHWC convs: ~25% faster sampling)
    ):
        super().__init__()
        if image_size % 2 ** (len(channel_mult) - 1):
            raise ValueError(f"image_size {image_size} is not divisible by 2^{len(channel_mult) - 1}")
        self.num_classes = num_classes
        self.image_shape = (image_channels, image_size, image_size)
        self.base_channels = base_channels
        self.cpu_channels_last = cpu_channels_last
        emb_channels = 4 * base_channels

        # time embedding MLP (DDPM), plus one embedding row per class and one for the null label
        self.time_mlp = nn.Sequential(
            nn.Linear(base_channels, emb_channels), nn.SiLU(), nn.Linear(emb_channels, emb_channels)
        )
        self.class_emb = nn.Embedding(num_classes + 1, emb_channels)

        self.conv_in = nn.Conv2d(image_channels, base_channels, 3, padding=1)

        # encoder: per resolution num_res_blocks blocks (+ attention), then a downsample
        self.down = nn.ModuleList()
        skip_channels = [base_channels]
        ch, res = base_channels, image_size
        for level, mult in enumerate(channel_mult):
            for _ in range(num_res_blocks):
                self.down.append(ResBlock(ch, base_channels * mult, emb_channels, dropout, max_groups))
                ch = base_channels * mult
                if res in attn_resolutions:
                    self.down.append(AttnBlock(ch, max_groups, num_heads))
                skip_channels.append(ch)
            if level != len(channel_mult) - 1:
                self.down.append(Downsample(ch))
                res //= 2
                skip_channels.append(ch)

        # middle: res, attention, res
        self.mid = nn.ModuleList([
            ResBlock(ch, ch, emb_channels, dropout, max_groups),
            AttnBlock(ch, max_groups, num_heads),
            ResBlock(ch, ch, emb_channels, dropout, max_groups),
        ])

        # decoder: per resolution num_res_blocks + 1 blocks, each eating one skip, then an upsample
        self.up = nn.ModuleList()
        for level, mult in reversed(list(enumerate(channel_mult))):
            for _ in range(num_res_blocks + 1):
                skip = skip_channels.pop()
                self.up.append(ResBlock(ch + skip, base_channels * mult, emb_channels, dropout, max_groups))
                ch = base_channels * mult
                if res in attn_resolutions:
                    self.up.append(AttnBlock(ch, max_groups, num_heads))
            if level != 0:
                self.up.append(Upsample(ch))
                res *= 2

        self.norm_out = _group_norm(ch, max_groups)
        self.conv_out = nn.Conv2d(ch, image_channels, 3, padding=1)
        self.fused_kernel = None  # for norm_out, as in ResBlock
        self._init_weights(zero_init)

    def _init_weights(self, zero_init: bool) -> None:
        # DDPM: variance scaling (fan_avg, uniform) = Xavier uniform, zero biases; the layers that
        # end a residual branch start at zero so that every block starts as the identity.
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        if zero_init:
            last = [b.conv1 for b in self.modules() if isinstance(b, ResBlock)]
            last += [b.proj for b in self.modules() if isinstance(b, AttnBlock)]
            for m in last + [self.conv_out]:
                nn.init.zeros_(m.weight)

    def forward(self, x: Tensor, t: Tensor, y: Tensor) -> Tensor:
        """x (B, C, H, W) in model space, t (B,) in [0, 1], y (B,) int64 in 0..num_classes -> eps."""
        t = t.reshape(-1).expand(x.shape[0])
        emb = self.time_mlp(timestep_embedding(t * 999.0, self.base_channels))
        emb = emb + self.class_emb(y)

        h = self.conv_in(x)
        if self.cpu_channels_last and h.device.type == "cpu":
            h = h.contiguous(memory_format=torch.channels_last)  # the convolutions follow their input's format
        skips = [h]
        for block in self.down:
            if isinstance(block, ResBlock):
                h = block(h, emb)
            else:
                h = block(h)
            if not isinstance(block, AttnBlock):
                skips.append(h)
            else:
                skips[-1] = h
        for block in self.mid:
            h = block(h, emb) if isinstance(block, ResBlock) else block(h)
        for block in self.up:
            if isinstance(block, ResBlock):
                h = block(torch.cat([h, skips.pop()], dim=1), emb)
            else:
                h = block(h)
        return self.conv_out(_norm_silu(self.norm_out, h, self.fused_kernel)).contiguous()


# Constructor arguments of the presets. "paper": the paper's (DDPM's CIFAR10) net, 35.7M parameters
# at 32x32x3. "digits": 8x8x1 (resolutions 8, 4, 2; 0.44M parameters, 11 MFLOP per image), sized
# for guided sampling on a laptop CPU: most of the FLOPs sit at 8x8, so it keeps 24 channels
# there and one block per resolution. "tiny": 12k parameters, for tests; its output layers are
# random (zero_init=False) so that tests see a non-trivial eps.
UNET_PRESETS: dict[str, dict] = {
    "paper": dict(
        image_channels=3, image_size=32, num_classes=10, base_channels=128, channel_mult=(1, 2, 2, 2),
        num_res_blocks=2, attn_resolutions=(16,), dropout=0.1,
    ),
    "digits": dict(
        image_channels=1, image_size=8, num_classes=10, base_channels=24, channel_mult=(1, 1, 2),
        num_res_blocks=1, attn_resolutions=(4,), dropout=0.1,
    ),
    "tiny": dict(
        image_channels=1, image_size=8, num_classes=10, base_channels=4, channel_mult=(1, 2),
        num_res_blocks=1, attn_resolutions=(4,), dropout=0.0, zero_init=False,
    ),
}
