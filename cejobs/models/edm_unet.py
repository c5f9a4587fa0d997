"""EDM's DDPM++ network and its VP preconditioning, written for cejobs.

Karras et al. (2022), "Elucidating the Design Space of Diffusion-Based Generative Models":
`SongUNet` (their re-implementation of score_sde's DDPM++) inside `VPPrecond` (their Table 1,
"VP" column). Parameter and buffer names equal EDM's (NVlabs/edm `training/networks.py`), so a
state_dict converted from EDM's pickles loads as is. Only the DDPM++ variant of `SongUNet` is
built: positional noise embedding, standard encoder and decoder, one attention head; the
NCSN++ options (Fourier embedding, skip/residual encoder, skip decoder) are refused by
`check_unet_kwargs`. Inference only: EDM's weight initialisation is not reproduced (weights
always come from a file).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cejobs.errors import CheckpointError

# The SongUNet options cejobs builds, with the value each must have (EDM's DDPM++).
DDPMPP_ONLY = {
    "embedding_type": "positional",
    "channel_mult_noise": 1,
    "encoder_type": "standard",
    "decoder_type": "standard",
}
# SongUNet's constructor arguments and EDM's defaults for them.
UNET_DEFAULTS = {
    "label_dim": 0,
    "augment_dim": 0,
    "model_channels": 128,
    "channel_mult": [1, 2, 2, 2],
    "channel_mult_emb": 4,
    "num_blocks": 4,
    "attn_resolutions": [16],
    "dropout": 0.10,
    "label_dropout": 0,
    **DDPMPP_ONLY,
    "resample_filter": [1, 1],
}

# VPPrecond's arguments in EDM's CIFAR10 VP networks (EDM train.py: --arch=ddpmpp, --precond=vp,
# augmentation on); label_dim 10 for the conditional one, 0 for the unconditional one.
CIFAR10_VP_KWARGS = {
    "img_resolution": 32, "img_channels": 3, "use_fp16": False, "model_type": "SongUNet",
    "augment_dim": 9, "model_channels": 128, "channel_mult": [2, 2, 2], "num_blocks": 4,
    "attn_resolutions": [16], "dropout": 0.13, "embedding_type": "positional",
    "channel_mult_noise": 1, "encoder_type": "standard", "decoder_type": "standard",
    "resample_filter": [1, 1],
}


def check_unet_kwargs(kwargs: dict) -> None:
    """Refuse, in one line, SongUNet arguments cejobs does not build."""
    unknown = sorted(set(kwargs) - set(UNET_DEFAULTS))
    if unknown:
        raise CheckpointError(f"EDM network: unknown SongUNet arguments {unknown}")
    for key, want in DDPMPP_ONLY.items():
        if kwargs.get(key, want) != want:
            raise CheckpointError(
                f"EDM network: {key}={kwargs[key]!r} is not supported (cejobs builds DDPM++: "
                f"{key}={want!r})"
            )


class Linear(nn.Module):
    """x W^T + b; EDM names its parameters `weight` and `bias`."""

    def __init__(self, in_features: int, out_features: int, bias: bool = True):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.bias = nn.Parameter(torch.empty(out_features)) if bias else None

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class Conv2d(nn.Module):
    """A 'same' convolution, optionally after a x2 up- or downsampling with a separable FIR
    filter (`resample_filter`, [1, 1]: box filter / nearest neighbour). Kernel 0: the
    resampling alone."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int, bias: bool = True,
                 up: bool = False, down: bool = False, resample_filter=(1, 1)):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.up, self.down = up, down
        shape = (out_channels, in_channels, kernel, kernel)
        self.weight = nn.Parameter(torch.empty(shape)) if kernel else None
        self.bias = nn.Parameter(torch.empty(out_channels)) if kernel and bias else None
        taps = torch.as_tensor(resample_filter, dtype=torch.float32)
        filt = torch.outer(taps, taps)[None, None] / taps.sum().square()
        self.register_buffer("resample_filter", filt if up or down else None)

    def forward(self, x: Tensor) -> Tensor:
        if self.up or self.down:
            filt = self.resample_filter.to(x.dtype)
            pad = (filt.shape[-1] - 1) // 2
            if self.up:  # transposed conv with 4 x the filter: a x2 upsampling keeping the mean
                filt = (4 * filt).tile(self.in_channels, 1, 1, 1)
                x = F.conv_transpose2d(x, filt, groups=self.in_channels, stride=2, padding=pad)
            else:
                filt = filt.tile(self.in_channels, 1, 1, 1)
                x = F.conv2d(x, filt, groups=self.in_channels, stride=2, padding=pad)
        if self.weight is not None:
            x = F.conv2d(x, self.weight.to(x.dtype), padding=self.weight.shape[-1] // 2)
        if self.bias is not None:
            x = x + self.bias.to(x.dtype)[None, :, None, None]
        return x


class GroupNorm(nn.Module):
    """GroupNorm with min(32, channels / 4) groups."""

    def __init__(self, num_channels: int, eps: float):
        super().__init__()
        self.num_groups = min(32, num_channels // 4)
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(num_channels))
        self.bias = nn.Parameter(torch.zeros(num_channels))

    def forward(self, x: Tensor) -> Tensor:
        weight, bias = self.weight.to(x.dtype), self.bias.to(x.dtype)
        return F.group_norm(x, self.num_groups, weight, bias, self.eps)


class UNetBlock(nn.Module):
    """DDPM++'s residual block (additive embedding, skip scale 1/sqrt2), optionally resampling
    (a 1x1 projected skip) and followed by one-head self-attention over pixels."""

    def __init__(self, in_channels: int, out_channels: int, emb_channels: int, *,
                 up: bool = False, down: bool = False, attention: bool = False,
                 dropout: float = 0.0, resample_filter=(1, 1)):
        super().__init__()
        self.in_channels, self.out_channels = in_channels, out_channels
        self.dropout = dropout
        self.skip_scale = math.sqrt(0.5)
        resample = dict(up=up, down=down, resample_filter=resample_filter)
        self.norm0 = GroupNorm(in_channels, eps=1e-6)
        self.conv0 = Conv2d(in_channels, out_channels, 3, **resample)
        self.affine = Linear(emb_channels, out_channels)
        self.norm1 = GroupNorm(out_channels, eps=1e-6)
        self.conv1 = Conv2d(out_channels, out_channels, 3)
        self.skip = None
        if out_channels != in_channels or up or down:
            self.skip = Conv2d(in_channels, out_channels, 1, **resample)
        self.attention = attention
        if attention:
            self.norm2 = GroupNorm(out_channels, eps=1e-6)
            self.qkv = Conv2d(out_channels, 3 * out_channels, 1)
            self.proj = Conv2d(out_channels, out_channels, 1)

    def forward(self, x: Tensor, emb: Tensor) -> Tensor:
        h = self.conv0(F.silu(self.norm0(x)))
        h = F.silu(self.norm1(h + self.affine(emb)[:, :, None, None].to(h.dtype)))
        h = self.conv1(F.dropout(h, p=self.dropout, training=self.training))
        x = (h + (x if self.skip is None else self.skip(x))) * self.skip_scale
        if self.attention:
            x = (x + self.proj(self._attend(self.norm2(x)))) * self.skip_scale
        return x

    def _attend(self, x: Tensor) -> Tensor:
        """Softmax attention, logits and softmax in at least fp32. EDM orders the qkv conv's
        output channels (channel, q/k/v): channel c of q, k, v is output 3c, 3c + 1, 3c + 2."""
        b, c, height, width = x.shape
        q, k, v = self.qkv(x).reshape(b, c, 3, height * width).unbind(2)
        wide = torch.promote_types(q.dtype, torch.float32)
        logits = torch.einsum("bci,bcj->bij", q.to(wide), (k / math.sqrt(c)).to(wide))
        weights = logits.softmax(dim=2).to(q.dtype)
        return torch.einsum("bij,bcj->bci", weights, v).reshape(b, c, height, width)


def positional_embedding(noise_labels: Tensor, channels: int) -> Tensor:
    """DDPM++'s sinusoidal embedding of the noise label, (sin, cos) halves, frequencies
    10000^(-i / (channels/2 - 1)) for i = 0 .. channels/2 - 1 (both ends included)."""
    half = channels // 2
    exponents = torch.arange(half, dtype=torch.float32, device=noise_labels.device) / (half - 1)
    freqs = (1.0 / 10000) ** exponents
    angles = torch.outer(noise_labels, freqs.to(noise_labels.dtype))
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class SongUNet(nn.Module):
    """F(x, c_noise, class_labels): EDM's DDPM++ U-Net (one-hot class labels)."""

    def __init__(self, img_resolution: int, in_channels: int, out_channels: int, **kwargs):
        super().__init__()
        check_unet_kwargs(kwargs)
        cfg = {**UNET_DEFAULTS, **kwargs}
        self.label_dim, self.label_dropout = cfg["label_dim"], cfg["label_dropout"]
        width = cfg["model_channels"]
        emb_channels = width * cfg["channel_mult_emb"]
        self.noise_channels = width
        block_kwargs = dict(emb_channels=emb_channels, dropout=cfg["dropout"],
                            resample_filter=cfg["resample_filter"])
        # Mapping: noise label (and one-hot class) -> embedding.
        self.map_label = Linear(self.label_dim, width) if self.label_dim else None
        augment_dim = cfg["augment_dim"]  # loaded, never used: cejobs samples without augmentation
        self.map_augment = Linear(augment_dim, width, bias=False) if augment_dim else None
        self.map_layer0 = Linear(width, emb_channels)
        self.map_layer1 = Linear(emb_channels, emb_channels)

        mults, attn = cfg["channel_mult"], cfg["attn_resolutions"]
        self.enc = nn.ModuleDict()
        skips: list[int] = []
        channels = in_channels
        for level, mult in enumerate(mults):
            res = img_resolution >> level
            if level == 0:
                self.enc[f"{res}x{res}_conv"] = Conv2d(channels, width, 3)
                channels = width
            else:
                self.enc[f"{res}x{res}_down"] = UNetBlock(channels, channels, down=True,
                                                          **block_kwargs)
            skips.append(channels)
            for idx in range(cfg["num_blocks"]):
                self.enc[f"{res}x{res}_block{idx}"] = UNetBlock(
                    channels, width * mult, attention=res in attn, **block_kwargs)
                channels = width * mult
                skips.append(channels)

        self.dec = nn.ModuleDict()
        self.dec_with_skip: set[str] = set()  # decoder blocks that take an encoder skip
        for level in reversed(range(len(mults))):
            res = img_resolution >> level
            if level == len(mults) - 1:
                self.dec[f"{res}x{res}_in0"] = UNetBlock(channels, channels, attention=True,
                                                         **block_kwargs)
                self.dec[f"{res}x{res}_in1"] = UNetBlock(channels, channels, **block_kwargs)
            else:
                self.dec[f"{res}x{res}_up"] = UNetBlock(channels, channels, up=True,
                                                        **block_kwargs)
            for idx in range(cfg["num_blocks"] + 1):
                name = f"{res}x{res}_block{idx}"
                self.dec[name] = UNetBlock(
                    channels + skips.pop(), width * mults[level],
                    attention=idx == cfg["num_blocks"] and res in attn, **block_kwargs)
                self.dec_with_skip.add(name)
                channels = width * mults[level]
        self.dec[f"{img_resolution}x{img_resolution}_aux_norm"] = GroupNorm(channels, eps=1e-6)
        self.dec[f"{img_resolution}x{img_resolution}_aux_conv"] = Conv2d(channels,
                                                                         out_channels, 3)

    def forward(self, x: Tensor, noise_labels: Tensor, class_labels: Tensor | None) -> Tensor:
        emb = positional_embedding(noise_labels, self.noise_channels)
        if self.map_label is not None:
            emb = emb + self.map_label(class_labels.to(emb.dtype) * math.sqrt(self.label_dim))
        emb = F.silu(self.map_layer1(F.silu(self.map_layer0(emb))))

        skips = []
        for block in self.enc.values():
            x = block(x, emb) if isinstance(block, UNetBlock) else block(x)
            skips.append(x)
        *blocks, norm, conv = self.dec.items()
        for name, block in blocks:
            if name in self.dec_with_skip:
                x = torch.cat([x, skips.pop()], dim=1)
            x = block(x, emb)
        return conv[1](F.silu(norm[1](x)))


class VPPrecond(nn.Module):
    """EDM's denoiser D(x; sigma, class_labels) = c_skip x + c_out F(c_in x, c_noise) for the
    VP schedule sigma(t) = sqrt(exp(beta_d t^2 / 2 + beta_min t) - 1) (EDM Table 1):
    c_skip = 1, c_out = -sigma, c_in = 1 / sqrt(sigma^2 + 1), c_noise = (M - 1) t(sigma).
    Constructor arguments are EDM's (`use_fp16` is accepted and ignored: cejobs chooses the
    network's dtype itself)."""

    def __init__(self, img_resolution: int, img_channels: int, label_dim: int = 0,
                 use_fp16: bool = False, beta_d: float = 19.9, beta_min: float = 0.1,
                 M: int = 1000, epsilon_t: float = 1e-5, model_type: str = "SongUNet",
                 **model_kwargs):
        super().__init__()
        if model_type != "SongUNet":
            raise CheckpointError(
                f"EDM network: model_type {model_type!r} is not supported (only SongUNet)")
        self.img_resolution, self.img_channels, self.label_dim = (img_resolution, img_channels,
                                                                  label_dim)
        self.beta_d, self.beta_min, self.M, self.epsilon_t = beta_d, beta_min, M, epsilon_t
        self.model = SongUNet(img_resolution, img_channels, img_channels, label_dim=label_dim,
                              **model_kwargs)

    def sigma(self, t: Tensor) -> Tensor:
        """EDM's sigma(t), with expm1 for accuracy as t -> 0."""
        return torch.expm1(0.5 * self.beta_d * t**2 + self.beta_min * t).sqrt()

    def sigma_inv(self, sigma: Tensor) -> Tensor:
        """t(sigma), the inverse of `sigma` (EDM's closed form)."""
        root = (self.beta_min**2 + 2 * self.beta_d * torch.log1p(sigma**2)).sqrt()
        return (root - self.beta_min) / self.beta_d

    def network_output(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None) -> Tensor:
        """F(c_in x, c_noise, class_labels); sigma of shape (B,)."""
        c_in = 1.0 / (sigma**2 + 1).sqrt()
        c_noise = (self.M - 1) * self.sigma_inv(sigma)
        return self.model(c_in[:, None, None, None] * x, c_noise, class_labels)

    def forward(self, x: Tensor, sigma: Tensor, class_labels: Tensor | None = None) -> Tensor:
        """D(x; sigma, class_labels) = x - sigma F (c_skip = 1, c_out = -sigma)."""
        sigma = sigma.to(x.dtype).reshape(-1)
        if self.label_dim and class_labels is None:
            class_labels = torch.zeros(x.shape[0], self.label_dim, dtype=x.dtype,
                                       device=x.device)
        out = self.network_output(x, sigma, class_labels)
        return x - sigma[:, None, None, None] * out.to(x.dtype)
