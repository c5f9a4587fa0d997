"""Pieces shared by the two training commands: data order, EMA, devices, resume files, logging.

Resume files. Every `--save-every` steps (diffusion) or epochs (classifier), and at the end of a
run, a trainer writes `<out>.resume.pt`: an ordinary cejobs checkpoint whose "extra" entry holds
the training state (raw weights, optimizer, step, RNG states, and the settings that decide the
numbers). `--resume FILE` restores all of it. The data order is a pure function of (seed, epoch),
so a resumed run is bit-identical to an unbroken one on the same device and thread count.
"""

from __future__ import annotations

import copy
import dataclasses
import shlex
import sys
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
import torch
from torch import nn

from cejobs.settings import identity_of
from cejobs.settings import setting
from cejobs.errors import TrainError


@dataclass
class TrainSettings:
    """The fields both training configs have. Fields marked identity=True decide the numbers,
    and a resume must repeat them; the others (paths, device, logging) may change."""

    dataset: str = setting("cifar10", "digits | cifar10 | svhn | PATH.npz | store:PATH", identity=True)
    data_root: str | None = setting(None, "folder holding the cifar10/svhn files (never downloaded)")
    batch_size: int = setting(128, "images per step", identity=True, ge=1)
    channels_last: bool = setting(True, "channels-last memory format (faster convolutions on CPU "
                                        "and GPU)", identity=True)
    device: str = setting("auto", "auto | cpu | cuda | cuda:N")
    threads: int = setting(0, "torch CPU threads (0: torch's default)")
    progress: bool = setting(True, "show a progress bar")

    def identity(self) -> dict:
        return identity_of(self)




def set_threads(threads: int) -> None:
    if threads > 0:
        torch.set_num_threads(threads)


@lru_cache(maxsize=4)
def _epoch_permutation(seed: int, epoch: int, n: int) -> np.ndarray:
    return np.random.default_rng([seed, 0xDA7A, epoch]).permutation(n)


def epoch_order(seed: int, epoch: int, n: int) -> np.ndarray:
    """The order in which epoch `epoch` visits the n training examples: a function of (seed, epoch)."""
    return _epoch_permutation(seed, epoch, n)


def stream_batch(seed: int, n: int, batch_size: int, step: int) -> np.ndarray:
    """Indices of batch `step` of the endless stream epoch 0, epoch 1, ... (batches may straddle epochs)."""
    start, out = step * batch_size, []
    need = batch_size
    while need:
        epoch, offset = divmod(start, n)
        take = epoch_order(seed, epoch, n)[offset:offset + need]
        out.append(take)
        start += len(take)
        need -= len(take)
    return np.concatenate(out)


class EMA:
    """Exponential moving average of weights, with score_sde's warm-up: the decay used at update k is
    min(decay, (1 + k) / (10 + k)), so that short runs are not dominated by the initial weights."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.model = copy.deepcopy(model).eval()
        self.model.requires_grad_(False)
        self.updates = 0

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        d = min(self.decay, (1.0 + self.updates) / (10.0 + self.updates))
        torch._foreach_lerp_(list(self.model.parameters()), [p.detach() for p in model.parameters()], 1.0 - d)
        for be, b in zip(self.model.buffers(), model.buffers()):
            be.copy_(b)
        self.updates += 1


def rng_state(device: torch.device, *generators: torch.Generator) -> dict[str, Any]:
    """Global torch RNG states (dropout) and those of the given generators."""
    state = {"torch": torch.get_rng_state(), "generators": [g.get_state() for g in generators]}
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state(device)
    return state


def set_rng_state(state: dict[str, Any], device: torch.device, *generators: torch.Generator) -> None:
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state["generators"]):
        g.set_state(s)
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state(state["cuda"], device)


def resume_path(out: str) -> str:
    return f"{out}.resume.pt"


def check_resume_settings(path: str, saved: dict[str, Any], current: dict[str, Any]) -> None:
    """A resume must use the settings that decide the numbers; raise TrainError naming any difference."""
    diffs = [
        f"{k} (file: {saved.get(k)!r}, now: {current.get(k)!r})"
        for k in sorted(set(saved) | set(current))
        if _plain(saved.get(k)) != _plain(current.get(k))
    ]
    if diffs:
        raise TrainError(f"{path} was written with other settings; resume with the same ones: " + "; ".join(diffs))


def open_resume(cfg, trainer: str, device) -> tuple[Any, dict[str, Any]]:
    """The resume file `cfg.resume` of `trainer` (diffusion | classifier), checked against the
    settings of `cfg`: (its checkpoint, its training state)."""
    from cejobs.errors import CheckpointError
    from cejobs.models.checkpoint import load_checkpoint

    try:
        state = load_checkpoint(cfg.resume, expect_kind=trainer, map_location=device)
    except CheckpointError as exc:
        raise TrainError(f"--resume: {exc}") from exc
    if state.extra.get("trainer") != trainer:
        raise TrainError(f"{cfg.resume} is not a {trainer} resume file (written by --save-every)")
    check_resume_settings(cfg.resume, state.extra["config"], cfg.identity())
    return state, state.extra


def _plain(v: Any) -> Any:
    return list(v) if isinstance(v, tuple) else v


def config_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as plain types (tuples become lists), for checkpoints."""
    return {k: _plain(v) for k, v in dataclasses.asdict(cfg).items()}


def command_line(argv: list[str] | None) -> str:
    args = sys.argv[1:] if argv is None else argv
    return "python -m cejobs.train " + " ".join(shlex.quote(a) for a in args)


def lr_at(step: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then constant (score_sde / DDPM)."""
    return lr * min(1.0, (step + 1) / warmup) if warmup > 0 else lr

