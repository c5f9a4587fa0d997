"""One checkpoint format for every cejobs network, loaded with `torch.load(weights_only=True)`.

A checkpoint is a dict of plain types and tensors:

    {"format": "cejobs-checkpoint-v1",
     "kind": "diffusion" | "classifier",
     "arch": a key of MODEL_CLASSES, "arch_kwargs": its constructor arguments,
     "state_dict": the weights,
     "meta": {"image_shape": [C, H, W], "num_classes", "dataset", "centered", "metrics", "train", ...},
     "extra": {...}}   # optional; training state in resume files (cejobs.train)

so that loading needs no other flags.
"""

from __future__ import annotations

import hashlib
import io
import os
from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cejobs.models import MODEL_CLASSES
from cejobs.errors import CheckpointError

FORMAT = "cejobs-checkpoint-v1"
KINDS = ("diffusion", "classifier")




@dataclass
class LoadedCheckpoint:
    model: nn.Module  # built from arch + arch_kwargs, weights loaded, in eval mode
    kind: str  # "diffusion" | "classifier"
    arch: str  # key of MODEL_CLASSES
    arch_kwargs: dict  # constructor arguments
    meta: dict  # image_shape, num_classes, dataset, centered, metrics, train, ...
    sha256: str  # of the file
    extra: dict = field(default_factory=dict)  # optional payload (training state of resume files)


def file_sha256(path: str | os.PathLike) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    kind: str,
    arch: str,
    arch_kwargs: dict,
    meta: dict,
    extra: dict | None = None,
) -> None:
    """Write `model` with its architecture and metadata to `path`, atomically (temporary file, rename).

    meta gets "image_shape" and "num_classes" from the model when it lacks them, and "centered"
    (True) for diffusion models.
    """
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if arch not in MODEL_CLASSES:
        raise ValueError(f"unknown arch {arch!r} (known: {', '.join(MODEL_CLASSES)})")
    meta = dict(meta)
    meta.setdefault("image_shape", list(model.image_shape))
    meta.setdefault("num_classes", int(model.num_classes))
    if kind == "diffusion":
        meta.setdefault("centered", True)
    payload = {
        "format": FORMAT,
        "kind": kind,
        "arch": arch,
        "arch_kwargs": dict(arch_kwargs),
        "state_dict": {k: v.detach().to("cpu").clone() for k, v in model.state_dict().items()},
        "meta": meta,
    }
    if extra is not None:
        payload["extra"] = extra
    _check_plain(payload, "checkpoint")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as f:
            torch.save(payload, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


_PLAIN = (str, int, float, bool, type(None))


def _check_plain(obj, where: str) -> None:
    """Raise TypeError unless obj is made of what weights_only loading accepts without allow-lists."""
    if type(obj) in _PLAIN or isinstance(obj, torch.Tensor):
        return
    if type(obj) in (dict, OrderedDict):
        for k, v in obj.items():
            _check_plain(k, where)
            _check_plain(v, f"{where}[{k!r}]")
    elif type(obj) in (list, tuple):
        for i, v in enumerate(obj):
            _check_plain(v, f"{where}[{i}]")
    else:
        raise TypeError(f"checkpoint entry {where} has type {type(obj).__name__}; use plain types")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _state_dict_mismatch(model: nn.Module, state_dict: dict) -> str | None:
    """One line describing how `state_dict` fails to fit `model`, or None when it fits."""
    own = model.state_dict()
    missing = [k for k in own if k not in state_dict]
    unexpected = [k for k in state_dict if k not in own]
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(own[k].shape)}"
        for k in own
        if k in state_dict and (not torch.is_tensor(state_dict[k]) or state_dict[k].shape != own[k].shape)
    ]
    parts = []
    for name, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if items:
            more = f" (+{len(items) - 3} more)" if len(items) > 3 else ""
            parts.append(f"{len(items)} {name}: {', '.join(items[:3])}{more}")
    return "; ".join(parts) or None


def load_checkpoint(
    path: str | os.PathLike,
    expect_kind: str | None = None,
    map_location: str | torch.device = "cpu",
    data: bytes | None = None,
) -> LoadedCheckpoint:
    """Load a cejobs checkpoint and build its model (eval mode). Raises CheckpointError (one line).
    `data`: the file's bytes, read elsewhere (a Ray driver's); `path` then only names it."""
    path = Path(path)
    if data is None and not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        source = io.BytesIO(data) if data is not None else path
        ckpt = torch.load(source, map_location=map_location, weights_only=True)
    except Exception as exc:  # not a torch file, or one that needs unsafe unpickling
        raise CheckpointError(f"{path} is not a cejobs checkpoint (torch.load: {_first_line(exc)})") from exc
    if not isinstance(ckpt, dict) or ckpt.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a cejobs checkpoint (no 'format': '{FORMAT}' entry)")
    kind, arch = ckpt.get("kind"), ckpt.get("arch")
    if kind not in KINDS:
        raise CheckpointError(f"{path}: unknown checkpoint kind {kind!r} (known: {', '.join(KINDS)})")
    if expect_kind is not None and kind != expect_kind:
        raise CheckpointError(
            f"{path} is a {kind} checkpoint, but a {expect_kind} checkpoint is needed here"
        )
    if arch not in MODEL_CLASSES:
        raise CheckpointError(f"{path}: unknown architecture {arch!r} (known: {', '.join(MODEL_CLASSES)})")
    arch_kwargs = ckpt.get("arch_kwargs") or {}
    try:
        model = MODEL_CLASSES[arch](**arch_kwargs)
    except (TypeError, ValueError) as exc:
        raise CheckpointError(f"{path}: cannot build {arch} from its arguments ({_first_line(exc)})") from exc
    state_dict = ckpt.get("state_dict")
    if not isinstance(state_dict, dict):
        raise CheckpointError(f"{path}: no state_dict")
    mismatch = _state_dict_mismatch(model, state_dict)
    if mismatch:
        raise CheckpointError(f"{path}: weights do not fit {arch}({arch_kwargs}): {mismatch}")
    model.load_state_dict(state_dict)
    model.to(map_location).eval()
    meta = dict(ckpt.get("meta") or {})
    meta.setdefault("image_shape", list(model.image_shape))
    meta.setdefault("num_classes", int(model.num_classes))
    return LoadedCheckpoint(
        model=model,
        kind=kind,
        arch=arch,
        arch_kwargs=arch_kwargs,
        meta=meta,
        sha256=hashlib.sha256(data).hexdigest() if data is not None else file_sha256(path),
        extra=ckpt.get("extra") or {},
    )
