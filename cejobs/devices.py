"""The torch device of a worker or trainer, from a `--device` value (auto | cpu | cuda[:N]),
and where this process keeps torch.compile's kernels (`--compile-cache`)."""

from __future__ import annotations

import os
from pathlib import Path

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


def default_inductor_cache() -> Path:
    """Where compiled kernels are kept between runs: $TORCHINDUCTOR_CACHE_DIR if set, else
    $XDG_CACHE_HOME/cejobs/inductor (~/.cache/cejobs/inductor)."""
    if os.environ.get("TORCHINDUCTOR_CACHE_DIR"):
        return Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "cejobs" / "inductor"


def use_inductor_cache(path: str | os.PathLike | None = None) -> Path:
    """Point this process's inductor caches (FX graphs, kernels, autotuning) at `path`
    (default: `default_inductor_cache()`), through $TORCHINDUCTOR_CACHE_DIR; the second compile
    of the same step then loads instead of compiling. Call before the first compile."""
    path = Path(path) if path is not None else default_inductor_cache()
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    return path
