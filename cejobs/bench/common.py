"""What the benchmarks share: the device, timing with device syncs, a measured matmul peak
and the FLOPs of a forward pass (for MFU, nanoGPT's estimate_mfu habit). Needs only torch."""

from __future__ import annotations

import platform
import time
from typing import Callable

import torch

from cejobs.models.unet import UNET_PRESETS


def bench_device(name: str) -> torch.device:
    """--device: auto (the GPU when there is one), cpu, cuda or cuda:N."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (a no-op off CUDA)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median_seconds(fn: Callable[[], object], device: torch.device, repeat: int) -> float:
    """Median seconds of `fn()` over `repeat` runs, after one warm-up."""
    fn()
    sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured FLOP/s of an n x n x n matmul: the peak MFU is reported against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = median_seconds(lambda: a @ b, device, repeat=5)
    return 2 * n**3 / seconds


def forward_flops(net, x, t, y) -> int:
    """FLOPs of one forward pass net(x, t, y), counted by torch's FlopCounterMode."""
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t, y)
    return counter.get_total_flops()


def preset_image_shape(preset: str) -> tuple[int, int, int]:
    p = UNET_PRESETS[preset]
    return (p["image_channels"], p["image_size"], p["image_size"])
