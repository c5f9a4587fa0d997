"""The torch device of a worker or trainer, from a `--device` value (auto | cpu | cuda[:N])."""

from __future__ import annotations

import torch

from cejobs.errors import ConfigError


def resolve_device(name: str) -> torch.device:
    """auto: the GPU when there is one, else the CPU; otherwise the named device, which must
    exist (ConfigError, one line, when it does not)."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"--device must be auto, cpu, cuda or cuda:N (got {name!r})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: no CUDA device is available (use --device cpu)")
    return device
