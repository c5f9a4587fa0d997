"""`--model SPEC`: which kind of diffusion model a spec names, the files it is built from, and
its eps-network (docs/models.md, "Your own diffusion model").

Every kind loads as a torch module called as eps(x, t, y) in model space, t in [eps, 1] on
cejobs' VP SDE, y in 0..C with C the null label, and its metadata (`image_shape`,
`num_classes`, `centered`, `kind`, `files`: name -> sha256 of every file it was built from):

- "cejobs": a cejobs checkpoint file (cejobs.models.checkpoint);
- "diffusers": a diffusers UNet2DModel folder or pipeline folder (diffusers_adapter.py);
- "edm": a folder written by `python -m cejobs.models convert edm` (cejobs/models/edm.py);
- "python": `py:package.module:factory`, a function returning (network, meta);
- a pair `--model COND --uncond-model UNCOND` of any two of these (pair.py).

The kind is decided by what the path holds, never by its name alone.
"""

from __future__ import annotations

import importlib.util
import re
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

from torch import nn

from cejobs.errors import CheckpointError
from cejobs.models.files import ModelFiles, combined_sha256, sha256_of
from cejobs.models.pair import EpsPair

HUB_ID = re.compile(r"[A-Za-z0-9][\w.-]*/[\w.-]+")
PICKLE_SUFFIXES = (".pkl", ".pickle", ".bin")
EDM_FILES = ("edm.json", "model.safetensors")


@dataclass
class LoadedModel:
    model: nn.Module  # eps(x, t, y), eval mode
    meta: dict  # image_shape, num_classes, centered, kind, files
    sha256: str  # the checkpoint file's for "cejobs"; else over every file (files.py)
    kind: str  # "cejobs", "diffusers", "edm", "python", or "pair:COND+UNCOND"


def detect(spec: str, files: ModelFiles | None = None) -> str:
    """The kind of model `spec` names, from what the path holds; one line when none."""
    from cejobs.models.diffusers_adapter import is_diffusers_folder

    files = files or ModelFiles()
    if spec.startswith("py:"):
        return "python"
    path = Path(spec)
    if files.is_dir(path):
        if files.is_file(path / EDM_FILES[0]):
            return "edm"
        if is_diffusers_folder(path, files):
            return "diffusers"
        raise CheckpointError(f"{path} is a folder but neither a diffusers UNet2DModel or "
                              f"pipeline folder (config.json, model_index.json) nor a converted "
                              f"EDM folder (edm.json); see docs/models.md")
    if files.is_file(path):
        if path.suffix in PICKLE_SUFFIXES:
            raise CheckpointError(f"{path} is a pickle; cejobs never unpickles a model: convert "
                                  f"an EDM pickle once with `python -m cejobs.models convert edm "
                                  f"{path} OUT/ --trust-pickle`, or re-save diffusers weights "
                                  f"as safetensors (docs/models.md)")
        if path.suffix == ".safetensors":
            raise CheckpointError(f"{path}: give the folder holding these weights and their "
                                  f"config, not the weight file")
        return "cejobs"
    if HUB_ID.fullmatch(spec) and not spec.startswith((".", "/")) and path.suffix not in (
            ".pt", ".pth", ".ckpt", ".safetensors", *PICKLE_SUFFIXES):
        raise CheckpointError(f"model not found: {spec} is no file or folder here, and looks "
                              f"like a Hugging Face hub id; cejobs never downloads: download it "
                              f"elsewhere first (huggingface-cli download {spec} --local-dir "
                              f"DIR) and give the folder DIR")
    raise CheckpointError(f"model not found: {spec}")


def model_files(spec: str, uncond: str | None = None) -> list[Path]:
    """Driver: every file the model of `spec` (and `uncond`) is built from, checked to exist."""
    if uncond:
        return model_files(spec) + model_files(uncond)
    kind = detect(spec)
    if kind == "cejobs":
        return [Path(spec)]
    if kind == "diffusers":
        from cejobs.models import diffusers_adapter

        return diffusers_adapter.model_files(Path(spec), ModelFiles())
    if kind == "edm":
        missing = [name for name in EDM_FILES if not (Path(spec) / name).is_file()]
        if missing:
            raise CheckpointError(f"{spec}: converted EDM folder without {', '.join(missing)}")
        return [Path(spec) / name for name in EDM_FILES]
    return [_entry_point(spec)[2]]


def load_model(spec: str, uncond: str | None = None, *, data: dict[str, bytes] | None = None,
               map_location: str = "cpu") -> LoadedModel:
    """The eps-network of `spec` (with `uncond`: the pair), from disk, or from `data` (the
    files' bytes read by a driver, str(path) -> bytes). Raises CheckpointError (one line)."""
    files = ModelFiles(data)
    if not uncond:
        return _load_one(spec, files, map_location, "single")
    cond = _load_one(spec, files, map_location, "cond")
    free = _load_one(uncond, files, map_location, "uncond")
    if tuple(cond.meta["image_shape"]) != tuple(free.meta["image_shape"]):
        raise CheckpointError(f"--model {spec} is for images {tuple(cond.meta['image_shape'])}, "
                              f"--uncond-model {uncond} for {tuple(free.meta['image_shape'])}")
    if not cond.meta.get("num_classes"):
        raise CheckpointError(f"--model {spec} is unconditional; a pair needs a conditional "
                              f"--model")
    if cond.meta.get("centered", True) != free.meta.get("centered", True):
        raise CheckpointError(f"--model {spec} and --uncond-model {uncond} use different model "
                              f"spaces (centered)")
    net = EpsPair(cond.model, free.model, cond.meta["num_classes"], cond.meta["image_shape"])
    hashes = {**{f"cond/{k}": v for k, v in cond.meta["files"].items()},
              **{f"uncond/{k}": v for k, v in free.meta["files"].items()}}
    kind = f"pair:{cond.kind}+{free.kind}"
    meta = {**cond.meta, "kind": kind, "files": hashes}
    return LoadedModel(net.eval(), meta, combined_sha256(hashes), kind)


def _load_one(spec: str, files: ModelFiles, map_location: str, role: str) -> LoadedModel:
    """role: "single" (--model alone), "cond" or "uncond" (a pair's members). The conditional
    member of a pair has no null label: every class embedding of a diffusers one is a class."""
    kind = detect(spec, files)
    if kind == "cejobs":
        from cejobs.models.checkpoint import load_checkpoint

        ckpt = load_checkpoint(spec, expect_kind="diffusion", map_location=map_location,
                               data=files.read(Path(spec)) if files.data is not None else None)
        meta = {**ckpt.meta, "kind": kind, "files": {Path(spec).name: ckpt.sha256}}
        return LoadedModel(ckpt.model, meta, ckpt.sha256, kind)
    if kind == "diffusers":
        from cejobs.models import diffusers_adapter

        net, meta = diffusers_adapter.load_diffusers(Path(spec), files, has_null=role != "cond")
        names = diffusers_adapter.model_files(Path(spec), files)
    elif kind == "edm":
        net, meta, names = _load_edm(Path(spec), files)
    else:
        net, meta, path = _load_entry_point(spec, files)
        names = [path]
    if role != "uncond" and meta.get("num_classes") is None:
        raise CheckpointError(f"{spec} is unconditional (no class labels); give it as "
                              f"--uncond-model with a conditional --model")
    for name, value in (("num_classes", meta.get("num_classes")),
                        ("image_shape", tuple(meta["image_shape"]))):
        if not hasattr(net, name):  # what the sampler and torch.compile's trial call read
            setattr(net, name, value)
    root = Path(spec) if kind in ("diffusers", "edm") else None
    hashes = {str(p.relative_to(root) if root else p.name): sha256_of(files.read(p))
              for p in names}
    meta = {"centered": True, **meta, "kind": kind, "files": hashes}
    return LoadedModel(net.to(map_location).eval(), meta, combined_sha256(hashes), kind)


def _load_edm(path: Path, files: ModelFiles) -> tuple[nn.Module, dict, list[Path]]:
    """A converted EDM folder through cejobs.models.edm; from shipped bytes, the folder is
    written to a temporary folder first."""
    try:
        from cejobs.models.edm import is_edm_folder, load_edm
    except ImportError as e:
        raise CheckpointError(f"{path} is a converted EDM folder, but this cejobs cannot read "
                              f"it ({e})") from None

    names = [path / name for name in EDM_FILES]
    if files.data is None:
        if not is_edm_folder(path):
            raise CheckpointError(f"{path} is not a converted EDM folder ({', '.join(EDM_FILES)})")
        net, meta = load_edm(path)
        return net, dict(meta), names
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            (Path(tmp) / name.name).write_bytes(files.read(name))
        net, meta = load_edm(Path(tmp))
    return net, dict(meta), names


def _entry_point(spec: str) -> tuple[str, str, Path]:
    """(module, factory, the module's file) of `py:package.module:factory`."""
    match = re.fullmatch(r"py:([A-Za-z_][\w.]*):([A-Za-z_]\w*)", spec)
    if match is None:
        raise CheckpointError(f"--model {spec}: an entry point is py:package.module:factory")
    module, factory = match.groups()
    try:
        found = importlib.util.find_spec(module)
    except (ImportError, ValueError) as e:
        raise CheckpointError(f"--model {spec}: module {module} is not importable here "
                              f"({e})") from None
    if found is None or not found.origin or not Path(found.origin).is_file():
        raise CheckpointError(f"--model {spec}: module {module} is not importable here "
                              f"(is its folder on PYTHONPATH?)")
    return module, factory, Path(found.origin)


def _entry_file(module: str, files: ModelFiles) -> Path:
    """The module's file: found by import on disk, or among the shipped files."""
    tails = (f"{module.replace('.', '/')}.py", f"{module.replace('.', '/')}/__init__.py")
    for key in files.data or ():
        if key.endswith(tails):
            return Path(key)
    raise CheckpointError(f"module {module} was not sent to this worker")


def _load_entry_point(spec: str, files: ModelFiles) -> tuple[nn.Module, dict, Path]:
    """Run the module's source (the bytes that are hashed), then its factory."""
    if files.data is None:
        module_name, factory, path = _entry_point(spec)
    else:
        module_name, factory = spec[3:].rsplit(":", 1)
        path = _entry_file(module_name, files)
    package = [str(path.parent)] if path.name == "__init__.py" else None
    module = importlib.util.module_from_spec(importlib.util.spec_from_file_location(
        module_name, path, submodule_search_locations=package))
    sys.modules[module_name] = module
    parent, _, child = module_name.rpartition(".")
    if parent in sys.modules:
        setattr(sys.modules[parent], child, module)
    exec(compile(files.read(path), str(path), "exec"), module.__dict__)  # noqa: S102
    if not callable(getattr(module, factory, None)):
        raise CheckpointError(f"--model {spec}: {module_name} has no function {factory}")
    made = getattr(module, factory)()
    if not (isinstance(made, tuple) and len(made) == 2 and isinstance(made[0], nn.Module)
            and isinstance(made[1], dict)):
        raise CheckpointError(f"--model {spec}: {factory}() must return (torch module, meta "
                              f"dict with image_shape and num_classes)")
    net, meta = made
    shape = meta.get("image_shape")
    if not (isinstance(shape, (list, tuple)) and len(shape) == 3
            and all(isinstance(s, int) and s > 0 for s in shape)):
        raise CheckpointError(f"--model {spec}: meta image_shape must be [C, H, W], got {shape!r}")
    classes = meta.get("num_classes")
    if classes is not None and not (isinstance(classes, int) and classes > 0):
        raise CheckpointError(f"--model {spec}: meta num_classes must be a positive int or None")
    return net, {**meta, "image_shape": list(shape)}, path

