"""The inputs of an evaluation: classifiers (named specs: cejobs checkpoints or library models,
cejobs.models.classifiers), store labels, and the checks done before any work
(docs/evaluation.md)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from cejobs.errors import ConfigError, StoreError
from cejobs.models.classifiers import load_classifier
from cejobs.jobs.config import REPO_DATA
from cejobs.store.layout import eval_prefix
from cejobs.store.storage import Storage
from cejobs.store.store import CEStore

SHIPPED_DIGITS = REPO_DATA / "digits"  # classifier-<name>.pt: the default classifiers on digits
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a classifier name is one path segment


@dataclass(frozen=True)
class Classifier:
    name: str  # its label, and its group eval/<name> in every store
    path: Path  # its weights file
    sha256: str  # of that file
    image_shape: tuple[int, ...]
    num_classes: int
    spec: str = ""  # as given: a checkpoint path, or torchvision:/timm:/robustbench: ARCH@...


def parse_classifier_flags(items: list[str]) -> dict[str, str]:
    """NAME=SPEC flags -> {name: spec}."""
    out: dict[str, str] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--classifier must look like NAME=CKPT or NAME=SPEC "
                              f"(got {item!r})")
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"classifier name {name!r} must be letters, digits and _.+- "
                              f"(it names the folder eval/<name> in the store)")
        if name in out:
            raise ConfigError(f"classifier name {name!r} is given twice")
        out[name] = path
    return out


def shipped_classifiers() -> dict[str, Path]:
    """data/digits/classifier-<name>.pt -> {name: path}, sorted by name (training's
    `*.resume.pt` files left aside)."""
    paths = sorted(p for p in SHIPPED_DIGITS.glob("classifier-*.pt")
                   if not p.name.endswith(".resume.pt"))
    return {p.stem.removeprefix("classifier-"): p for p in paths}


def root_dataset(store: CEStore, depth: int = 0) -> str:
    """The dataset under a store: `store:PATH` datasets (CEs of CEs) are followed to theirs."""
    name = str(store.config.get("dataset"))
    if name.startswith("store:") and depth < 8:
        try:
            return root_dataset(CEStore.open(name[len("store:"):]), depth + 1)
        except StoreError:
            return name
    return name


def default_out(store: Storage) -> Path:
    """runs/x.zarr -> runs/x.eval (x.eval beside a store without the .zarr suffix); for a
    store in object storage, runs/x.eval under the current folder."""
    stem = store.name.removesuffix(".zarr")
    parent = store.local_folder.parent if store.local_folder is not None else Path("runs")
    return parent / f"{stem}.eval"


def store_labels(paths: list[Storage]) -> list[str]:
    """Unique labels: folder names without .zarr, prefixed by their parent on a clash."""
    labels = [p.name.removesuffix(".zarr") for p in paths]
    for i, p in enumerate(paths):
        if labels.count(labels[i]) > 1:
            labels[i] = f"{p.resolve().parent.name}-{labels[i]}"
    return [lab if labels.count(lab) == 1 else f"{lab}-{i}" for i, lab in enumerate(labels)]


# ---------------------------------------------------------------------------- checks
def load_classifiers(specs: dict[str, str | Path], stores: list[CEStore]) -> list[Classifier]:
    """Load each classifier once (library models take the first store's image shape and
    classes; check_inputs compares them with every store's)."""
    lay = stores[0].layout if stores else None
    shape = tuple(lay.image_shape) if lay else None
    out = []
    for name, spec in specs.items():
        loaded = load_classifier(str(spec), shape, lay.num_classes if lay else None)
        out.append(Classifier(name, loaded.path, loaded.sha256,
                              tuple(loaded.meta["image_shape"]),
                              int(loaded.meta["num_classes"]), loaded.spec))
    return out


def check_inputs(stores: list[CEStore], classifiers: list[Classifier], allow_partial: bool) -> None:
    """Raise ConfigError (one line) on the first input that can't be evaluated as asked."""
    for store in stores:
        lay = store.layout
        for c in classifiers:
            if c.image_shape != tuple(lay.image_shape) or c.num_classes != lay.num_classes:
                raise ConfigError(
                    f"classifier {c.name} ({c.path}) is for images {c.image_shape} with "
                    f"{c.num_classes} classes, but {store.storage} has {tuple(lay.image_shape)} "
                    f"with {lay.num_classes} classes")
            recorded = store.classifier_sha256(c.name)
            if recorded is not None and recorded != c.sha256:
                raise ConfigError(
                    f"{store.storage} already has {eval_prefix(c.name)} from a file with "
                    f"sha256 "
                    f"{recorded[:12]}, but {c.path} has {c.sha256[:12]}; give it another name")
        done = store.done()
        if not done.any():
            raise ConfigError(f"{store.storage} has no finished shard (0 of {done.size}); "
                              f"run python -m cejobs.generate first")
        if not done.all() and not allow_partial:
            raise ConfigError(
                f"{store.storage} is incomplete ({int(done.sum())} of {done.size} shards done); "
                f"finish it with python -m cejobs.generate, or pass --allow-partial")


def default_classifier_paths(stores: list[CEStore]) -> dict[str, Path]:
    """The shipped digits classifiers, when every store's dataset is digits."""
    datasets = {root_dataset(s) for s in stores}
    if datasets != {"digits"}:
        raise ConfigError(f"no default classifiers for dataset(s) {', '.join(sorted(datasets))}"
                          f": pass --classifier NAME=CKPT")
    paths = shipped_classifiers()
    if not paths:
        raise ConfigError(f"no shipped classifiers {SHIPPED_DIGITS}/classifier-*.pt: "
                          f"pass --classifier NAME=CKPT")
    return paths
