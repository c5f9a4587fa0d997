"""WideResNet (Zagoruyko & Komodakis 2016), the paper's classifier ("2x WideResNet-40" = WRN-40-2).

Pre-activation basic blocks in three groups of widths 16k, 32k, 64k at strides 1, 2, 2, then
BatchNorm, ReLU, global average pooling and a linear layer. The model takes images in [0, 1]; the
per-channel input normalisation is part of the model (its constants are constructor arguments, so
a checkpoint carries them).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def _per_channel(value: float | tuple[float, ...] | list[float], channels: int, name: str) -> Tensor:
    v = torch.as_tensor(value, dtype=torch.float32).reshape(-1)
    if v.numel() == 1:
        v = v.expand(channels)
    if v.numel() != channels:
        raise ValueError(f"{name} has {v.numel()} values for {channels} input channels")
    return v.reshape(1, channels, 1, 1).clone()


class BasicBlock(nn.Module):
    """BN-ReLU-conv3x3-BN-ReLU-dropout-conv3x3, with a 1x1 conv shortcut when the shape changes."""

    def __init__(self, in_channels: int, out_channels: int, stride: int, dropout: float):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_channels)
        self.conv1 = nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_channels)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = nn.Conv2d(out_channels, out_channels, 3, padding=1, bias=False)
        self.shortcut = None
        if in_channels != out_channels or stride != 1:
            self.shortcut = nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        o = F.relu(self.bn1(x))
        # the shortcut branches off the pre-activated input when the shape changes (as in the WRN code)
        skip = x if self.shortcut is None else self.shortcut(o)
        h = self.conv1(o)
        h = self.conv2(self.dropout(F.relu(self.bn2(h))))
        return skip + h


class WideResNet(nn.Module):
    """WRN-depth-k classifier: images in [0, 1] -> logits."""

    def __init__(
        self,
        depth: int = 40,  # 6n + 4 layers: n blocks per group
        widen_factor: int = 2,  # k: group widths 16k, 32k, 64k
        num_classes: int = 10,  # outputs
        in_channels: int = 3,  # image channels
        image_size: int = 32,  # H = W (recorded; the net itself pools globally)
        dropout: float = 0.0,  # dropout between the convs of each block (paper: 0.3 for standard models)
        input_mean: float | tuple[float, ...] = 0.5,  # per-channel mean subtracted from [0, 1] inputs
        input_std: float | tuple[float, ...] = 0.25,  # per-channel std dividing them
    ):
        super().__init__()
        if depth < 10 or (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4 with n >= 1, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.num_classes = num_classes
        self.image_shape = (in_channels, image_size, image_size)
        # non-persistent: the constants come back from the constructor arguments, not the state dict
        self.register_buffer("input_mean", _per_channel(input_mean, in_channels, "input_mean"), persistent=False)
        self.register_buffer("input_std", _per_channel(input_std, in_channels, "input_std"), persistent=False)

        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, padding=1, bias=False)
        blocks = []
        for group, stride in enumerate((1, 2, 2)):
            for i in range(n):
                cin = widths[group] if i == 0 else widths[group + 1]
                blocks.append(BasicBlock(cin, widths[group + 1], stride if i == 0 else 1, dropout))
        self.blocks = nn.Sequential(*blocks)
        self.bn = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
            elif isinstance(m, nn.Linear):
                nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        """x (B, C, H, W) in [0, 1] -> logits (B, num_classes)."""
        h = self.conv1((x - self.input_mean) / self.input_std)
        h = F.relu(self.bn(self.blocks(h)))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(h, 1), 1))


# Constructor arguments of the presets. "wrn-40-2": the paper's classifier (2.2M parameters) at
# 32x32x3. "digits": WRN-10-2 at 8x8x1 (0.30M parameters, groups at 8x8, 4x4, 2x2), small enough
# for PGD training on a CPU. "tiny": WRN-10-1, for tests.
WRN_PRESETS: dict[str, dict] = {
    "wrn-40-2": dict(depth=40, widen_factor=2, num_classes=10, in_channels=3, image_size=32),
    "digits": dict(depth=10, widen_factor=2, num_classes=10, in_channels=1, image_size=8),
    "tiny": dict(depth=10, widen_factor=1, num_classes=10, in_channels=1, image_size=8),
}
