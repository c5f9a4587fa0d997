"""RobustBench model-zoo architectures, re-implemented with RobustBench's parameter names so that
its checkpoint files load unchanged (robustbench/model_zoo/architectures/wide_resnet.py).

The `robustbench` package itself pins timm==1.0.9 (and gdown, pyautoattack), which cannot share
an environment with cejobs' timm; cejobs therefore builds the few architectures it supports
itself. `ROBUSTBENCH_MODELS` lists them by (dataset, threat model, model name), RobustBench's
own keys; their files sit at MODEL_DIR/<dataset>/<threat>/<name>.pt, as RobustBench's
`load_model(model_name, model_dir, dataset, threat_model)` writes them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class RBBasicBlock(nn.Module):
    """RobustBench's (TRADES') pre-activation block: when the width or stride changes, the
    shortcut (`convShortcut`) takes the activated input, else the raw input."""

    def __init__(self, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(in_planes)
        self.conv1 = nn.Conv2d(in_planes, out_planes, 3, stride=stride, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_planes)
        self.conv2 = nn.Conv2d(out_planes, out_planes, 3, stride=1, padding=1, bias=False)
        self.equal_in_out = in_planes == out_planes
        self.convShortcut = None if self.equal_in_out else nn.Conv2d(
            in_planes, out_planes, 1, stride=stride, padding=0, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        act = F.relu(self.bn1(x))
        out = self.conv2(F.relu(self.bn2(self.conv1(act))))
        return (x if self.equal_in_out else self.convShortcut(act)) + out


class RBNetworkBlock(nn.Module):
    def __init__(self, layers: int, in_planes: int, out_planes: int, stride: int):
        super().__init__()
        self.layer = nn.Sequential(*[
            RBBasicBlock(in_planes if i == 0 else out_planes, out_planes, stride if i == 0 else 1)
            for i in range(layers)])

    def forward(self, x: Tensor) -> Tensor:
        return self.layer(x)


class RBWideResNet(nn.Module):
    """RobustBench's WideResNet(depth, widen_factor): conv1, block1-3, bn1, fc. Global average
    pooling is adaptive, which on 32x32 inputs (an 8x8 map) is RobustBench's avg_pool2d(8);
    `in_channels` is 3 in every RobustBench model."""

    def __init__(self, depth: int = 28, widen_factor: int = 10, num_classes: int = 10,
                 in_channels: int = 3):
        super().__init__()
        if (depth - 4) % 6:
            raise ValueError(f"WideResNet depth must be 6n + 4, got {depth}")
        n = (depth - 4) // 6
        widths = [16, 16 * widen_factor, 32 * widen_factor, 64 * widen_factor]
        self.conv1 = nn.Conv2d(in_channels, widths[0], 3, stride=1, padding=1, bias=False)
        self.block1 = RBNetworkBlock(n, widths[0], widths[1], 1)
        self.block2 = RBNetworkBlock(n, widths[1], widths[2], 2)
        self.block3 = RBNetworkBlock(n, widths[2], widths[3], 2)
        self.bn1 = nn.BatchNorm2d(widths[3])
        self.fc = nn.Linear(widths[3], num_classes)

    def forward(self, x: Tensor) -> Tensor:
        out = self.block3(self.block2(self.block1(self.conv1(x))))
        out = F.relu(self.bn1(out))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(out, 1), 1))


@dataclass(frozen=True)
class RobustBenchModel:
    build: Callable[[], nn.Module]  # the architecture, random weights
    image_shape: tuple[int, int, int]  # (C, H, W) of the images it takes, in [0, 1]
    num_classes: int
    mean: tuple[float, ...] = field(default=(0.0,))  # its input normalisation (RobustBench's)
    std: tuple[float, ...] = field(default=(1.0,))


# (dataset, threat model, model name) -> its architecture, as in robustbench/model_zoo/.
ROBUSTBENCH_MODELS: dict[tuple[str, str, str], RobustBenchModel] = {
    ("cifar10", threat, "Standard"): RobustBenchModel(
        lambda: RBWideResNet(depth=28, widen_factor=10), (3, 32, 32), 10)
    for threat in ("Linf", "L2")
}
