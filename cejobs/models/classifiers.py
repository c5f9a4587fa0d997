"""Classifiers named by a spec: a cejobs checkpoint, or an architecture of torchvision, timm or
RobustBench's model zoo with its weights in a local file (docs/models.md, "Your own
classifier"). Nothing is ever downloaded.

    PATH                              a cejobs classifier checkpoint
    torchvision:ARCH@WEIGHTS[;OPTS]   torchvision.models.get_model(ARCH), weights from WEIGHTS
    timm:ARCH@WEIGHTS[;OPTS]          timm.create_model(ARCH), weights from WEIGHTS
    robustbench:NAME@MODEL_DIR[;OPTS] RobustBench's NAME, weights in
                                      MODEL_DIR/<dataset>/<threat>/NAME.pt

WEIGHTS is a state dict in a safetensors file, or in a torch file that loads with
`weights_only=True`; a dict holding it under "state_dict", and DataParallel's "module."
prefixes, are accepted (RobustBench's conventions). OPTS are `;`-separated `key=value`s:
`mean=M1,M2,M3` and `std=S1,S2,S3` (the input normalisation), and for robustbench
`dataset=cifar10` and `threat=Linf|L2|corruptions`. torchvision and timm models get their
classes and input channels from the dataset; their normalisation is the spec's, else timm's
`pretrained_cfg` (a 3-value one averaged on 1-channel data), else none. Every model is wrapped
in `NormalizedClassifier`, so it takes images in [0, 1], as every cejobs metric gives them.
"""

from __future__ import annotations

import hashlib
import io
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from cejobs.errors import CheckpointError, ConfigError

LIBRARIES = ("torchvision", "timm", "robustbench")
OPTIONS = {"mean", "std", "dataset", "threat"}


@dataclass(frozen=True)
class ClassifierSpec:
    library: str  # "cejobs" (a checkpoint path) | one of LIBRARIES
    arch: str  # the library's architecture or RobustBench model name; "" for cejobs
    location: str  # the weights file; robustbench: MODEL_DIR
    options: tuple[tuple[str, str], ...] = ()  # sorted (key, value) pairs
    text: str = ""  # the spec as given

    def option(self, key: str) -> str | None:
        return dict(self.options).get(key)

    def floats(self, key: str) -> tuple[float, ...] | None:
        value = self.option(key)
        if value is None:
            return None
        try:
            return tuple(float(v) for v in value.split(","))
        except ValueError:
            raise ConfigError(f"classifier {self.text!r}: {key} must be comma-separated "
                              f"numbers (got {value!r})") from None


def parse_classifier_spec(text: str) -> ClassifierSpec:
    """The spec of a classifier flag; ConfigError (one line) when it is malformed."""
    library, sep, rest = str(text).partition(":")
    if not sep or library not in LIBRARIES:
        return ClassifierSpec("cejobs", "", str(text), text=str(text))
    head, *opts = rest.split(";")
    arch, at, location = head.partition("@")
    if not at or not arch or not location:
        what = "MODEL_DIR" if library == "robustbench" else "WEIGHTS"
        raise ConfigError(f"classifier {text!r} must look like {library}:ARCH@{what}[;key=value]")
    options = {}
    for opt in filter(None, opts):
        key, eq, value = opt.partition("=")
        if not eq or key not in OPTIONS:
            raise ConfigError(f"classifier {text!r}: unknown option {opt!r} (known: "
                              f"{', '.join(sorted(OPTIONS))}, as key=value)")
        options[key] = value
    return ClassifierSpec(library, arch, location, tuple(sorted(options.items())), str(text))


class NormalizedClassifier(nn.Module):
    """`net((x - mean) / std)` for images x in [0, 1]: a library model behind cejobs' input
    convention. `image_shape` and `num_classes` are those of the images it takes."""

    def __init__(self, net: nn.Module, mean, std, image_shape, num_classes: int):
        super().__init__()
        channels = int(image_shape[0])
        self.net = net
        self.register_buffer("mean", _per_channel(mean, channels, "mean"))
        self.register_buffer("std", _per_channel(std, channels, "std"))
        self.image_shape = tuple(int(v) for v in image_shape)
        self.num_classes = int(num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.net((x - self.mean) / self.std)


def _per_channel(values, channels: int, name: str) -> Tensor:
    v = torch.as_tensor(tuple(values), dtype=torch.float32).reshape(-1)
    if v.numel() == 3 and channels == 1:
        v = v.mean().reshape(1)  # an RGB config on grey images
    if v.numel() == 1:
        v = v.expand(channels)
    if v.numel() != channels:
        raise ConfigError(f"{name} has {v.numel()} values for {channels} input channels")
    if name == "std" and not bool((v > 0).all()):
        raise ConfigError(f"std must be > 0 (got {v.tolist()})")
    return v.reshape(1, channels, 1, 1).clone()


@dataclass
class LoadedClassifier:
    model: nn.Module  # in eval mode, taking images in [0, 1]
    spec: str  # as given
    path: Path  # the file whose bytes `sha256` hashes
    sha256: str
    meta: dict = field(default_factory=dict)  # image_shape, num_classes (and a checkpoint's own)


def classifier_file(spec: str | ClassifierSpec, must_exist: bool = True) -> Path:
    """The one file that holds a classifier's weights (a robustbench spec's, found in its
    MODEL_DIR); CheckpointError (one line) when it is not there. Without `must_exist` (a Ray
    worker given the driver's bytes) a robustbench spec names one known model."""
    spec = spec if isinstance(spec, ClassifierSpec) else parse_classifier_spec(spec)
    if spec.library != "robustbench":
        path = Path(spec.location)
        if must_exist and not path.is_file():
            kind = "checkpoint" if spec.library == "cejobs" else f"{spec.library} weights file"
            raise CheckpointError(f"{kind} not found: {path}")
        return path
    return _robustbench_entry(spec, must_exist=must_exist)[0]


def _robustbench_entry(spec: ClassifierSpec, found: Path | None = None, must_exist: bool = True):
    """(weights file, RobustBenchModel) of a robustbench spec; `found`: its file, already
    located (by a driver), named MODEL_DIR/<dataset>/<threat>/<name>.pt."""
    from cejobs.models.robustbench import ROBUSTBENCH_MODELS

    if found is not None:
        key = (found.parent.parent.name, found.parent.name, found.stem)
        if key in ROBUSTBENCH_MODELS:
            return found, ROBUSTBENCH_MODELS[key]
    root = Path(spec.location)
    dataset, threat = spec.option("dataset"), spec.option("threat")
    known = sorted(k for k in ROBUSTBENCH_MODELS if k[2] == spec.arch
                   and dataset in (None, k[0]) and threat in (None, k[1]))
    if not known:
        names = sorted({f"{d}/{t}/{n}" for d, t, n in ROBUSTBENCH_MODELS})
        raise ConfigError(f"classifier {spec.text!r}: cejobs does not build RobustBench model "
                          f"{spec.arch} (it builds {', '.join(names)})")
    present = [k for k in known if (root / k[0] / k[1] / f"{k[2]}.pt").is_file()
               or (not must_exist and len(known) == 1)]
    if not present:
        where = " or ".join(str(root / d / t / f"{n}.pt") for d, t, n in known)
        raise CheckpointError(f"RobustBench weights not found: put {spec.arch}.pt at {where} "
                              f"(cejobs never downloads)")
    if len(present) > 1:
        raise ConfigError(f"classifier {spec.text!r}: {spec.arch} is in "
                          f"{', '.join(f'{d}/{t}' for d, t, _ in present)} under {root}; "
                          f"choose one with ;dataset=...;threat=...")
    key = present[0]
    return root / key[0] / key[1] / f"{key[2]}.pt", ROBUSTBENCH_MODELS[key]


def load_classifier(spec: str | ClassifierSpec, image_shape=None, num_classes: int | None = None,
                    data: bytes | None = None, path: Path | None = None,
                    map_location="cpu") -> LoadedClassifier:
    """Build the classifier of `spec` with its weights, wrapped to take images in [0, 1], in
    eval mode. torchvision and timm models need the dataset's `image_shape` (C, H, W) and
    `num_classes`. `data`, `path`: the weights file's bytes and its path (`classifier_file`),
    read elsewhere (a Ray driver's)."""
    spec = spec if isinstance(spec, ClassifierSpec) else parse_classifier_spec(spec)
    if path is not None and data is None and not Path(path).is_file():
        raise CheckpointError(f"classifier weights not found: {path}")
    if spec.library == "cejobs":
        from cejobs.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(path or spec.location, expect_kind="classifier", data=data,
                               map_location=map_location)
        return LoadedClassifier(ckpt.model, spec.text, Path(path or spec.location), ckpt.sha256,
                                ckpt.meta)
    if spec.library == "robustbench":
        path, entry = _robustbench_entry(spec, None if path is None else Path(path))
        image_shape, num_classes = entry.image_shape, entry.num_classes
        net, default_mean, default_std = entry.build(), entry.mean, entry.std
    else:
        path = classifier_file(spec) if path is None else Path(path)
        if image_shape is None or num_classes is None:
            raise ConfigError(f"classifier {spec.text!r} needs the dataset's image shape and "
                              f"number of classes")
        net, default_mean, default_std = _library_net(spec, tuple(image_shape), int(num_classes))
    raw = path.read_bytes() if data is None else data
    _load_weights(net, _read_state_dict(raw, path), spec)
    mean = spec.floats("mean") or default_mean
    std = spec.floats("std") or default_std
    model = NormalizedClassifier(net, mean, std, image_shape, num_classes)
    meta = dict(image_shape=list(model.image_shape), num_classes=model.num_classes,
                spec=spec.text, mean=model.mean.flatten().tolist(),
                std=model.std.flatten().tolist())
    return LoadedClassifier(model.to(map_location).eval(), spec.text, path,
                            hashlib.sha256(raw).hexdigest(), meta)


def _library_net(spec: ClassifierSpec, image_shape: tuple, num_classes: int):
    """(network, default mean, default std) of a torchvision or timm architecture."""
    channels = image_shape[0]
    if spec.library == "timm":
        import timm

        try:
            net = timm.create_model(spec.arch, pretrained=False, num_classes=num_classes,
                                    in_chans=channels)
        except RuntimeError as e:  # timm's "Unknown model"
            raise ConfigError(f"classifier {spec.text!r}: {e}") from None
        cfg = getattr(net, "pretrained_cfg", None) or {}
        return net, cfg.get("mean", (0.0,)), cfg.get("std", (1.0,))
    import torchvision

    try:
        net = torchvision.models.get_model(spec.arch, weights=None, num_classes=num_classes)
    except ValueError as e:  # torchvision's "Unknown model"
        raise ConfigError(f"classifier {spec.text!r}: {e}") from None
    _set_input_channels(net, channels)
    return net, (0.0,), (1.0,)


def _set_input_channels(net: nn.Module, channels: int) -> None:
    """Replace a torchvision network's first convolution by one taking `channels` inputs."""
    for name, module in net.named_modules():
        if isinstance(module, nn.Conv2d):
            if module.in_channels != channels:
                parent_name, _, attr = name.rpartition(".")
                parent = net.get_submodule(parent_name) if parent_name else net
                setattr(parent, attr, nn.Conv2d(
                    channels, module.out_channels, module.kernel_size, module.stride,
                    module.padding, module.dilation, module.groups, module.bias is not None,
                    module.padding_mode))
            return


def _read_state_dict(raw: bytes, path: Path) -> dict:
    if path.suffix == ".safetensors":
        from safetensors.torch import load as load_safetensors

        try:
            return load_safetensors(raw)
        except Exception as e:  # noqa: BLE001 - a damaged or foreign file
            raise CheckpointError(f"{path} is not a safetensors file ({e})") from None
    try:
        state = torch.load(io.BytesIO(raw), map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - not a torch file, or one needing unsafe unpickling
        line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise CheckpointError(f"{path} is not a weights-only torch file ({line})") from None
    if isinstance(state, dict) and isinstance(state.get("state_dict"), dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError(f"{path} holds no state dict")
    return state


def _load_weights(net: nn.Module, state: dict, spec: ClassifierSpec) -> None:
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    own = net.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    wrong = [k for k in own if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    for what, keys in (("missing", missing), ("unexpected", unexpected),
                       ("of another shape", wrong)):
        if keys:
            more = f" (+{len(keys) - 3} more)" if len(keys) > 3 else ""
            raise CheckpointError(f"classifier {spec.text!r}: the weights do not fit "
                                  f"{spec.arch}: {len(keys)} {what}: "
                                  f"{', '.join(keys[:3])}{more}")
    net.load_state_dict(state)
