"""The Python API: the same code as the CLIs, for notebooks.

    import cejobs
    store = cejobs.generate(sources=4, steps=20, backend="local", store="runs/demo.zarr")
    data = cejobs.open_store("runs/demo.zarr")   # data.tree (xarray), data.ces (pandas)
    tables = cejobs.evaluate(store=["runs/demo.zarr"], backend="local")
    net = cejobs.load_classifier("timm:resnet18@weights.safetensors", dataset="digits")

`generate` and `evaluate` are plain functions whose keyword-only parameters are the fields of
GenerateConfig and EvaluateConfig (the CLI's flags, with underscores), with their defaults:
`inspect.signature` and `help()` list them. A bad value raises ConfigError (a
cejobs.errors.CejobsError) with the CLI's one-line message.

A call is quiet and leaves the caller's process as it found it: its messages go to the
`cejobs` logger (configure `logging` to see them: warnings reach stderr through Python's
last-resort handler), its only output is the progress bar (`progress=False` hides it; a
widget in a notebook), and torch's thread count, environment variables and signal handlers
that the run changes are put back when it returns (`kept_process_state`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import inspect
import os
import signal
import threading
import textwrap
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import pandas as pd

from cejobs.jobs.config import EvaluateConfig, GenerateConfig
from cejobs.settings import typed
from cejobs.store.store import CEStore


def keyword_signature(config: type, returns: Any) -> inspect.Signature:
    """Every field of the settings dataclass `config` as a keyword-only parameter, with its
    default and type: what `inspect.signature` and `help()` show for an API function."""
    hints = typing.get_type_hints(config)
    params = [inspect.Parameter(f.name, inspect.Parameter.KEYWORD_ONLY, annotation=hints[f.name],
                                default=f.default if f.default is not dataclasses.MISSING
                                else f.default_factory())
              for f in dataclasses.fields(config)]
    return inspect.Signature(params, return_annotation=returns)


def fields_help(config: type) -> str:
    """A docstring section listing each field of `config` with its help line (cejobs.settings)."""
    lines = ["Keyword arguments (the command line's flags, with underscores):", ""]
    for f in dataclasses.fields(config):
        lines.append(textwrap.fill(f"{f.name}: {f.metadata.get('help', '')}", width=92,
                                   initial_indent="    ", subsequent_indent="        "))
        if f.metadata.get("choices"):
            lines.append(f"        one of: {', '.join(map(str, f.metadata['choices']))}")
    return "\n".join(lines)


def takes_fields(config: type, returns: Any) -> Callable[[Callable], Callable]:
    """Give an API function `f(**fields)` the signature and field list of `config`, so the
    defaults are written once, in the dataclass."""
    def decorate(function: Callable) -> Callable:
        function.__signature__ = keyword_signature(config, returns)
        function.__doc__ = f"{inspect.cleandoc(function.__doc__ or '')}\n\n{fields_help(config)}"
        return function
    return decorate


SIGNALS = tuple(getattr(signal, name) for name in ("SIGINT", "SIGTERM", "SIGUSR1", "SIGUSR2")
                if hasattr(signal, name))


@contextlib.contextmanager
def kept_process_state():
    """Put back what a run changes in the caller's process: torch's intra-op thread count
    (the local backend sets it), the environment variables it set, changed or removed (Ray
    sets some), and the handlers of SIGINT, SIGTERM, SIGUSR1 and SIGUSR2. What `import cejobs`
    set (OMP_WAIT_POLICY, cejobs/threads.py) was set before the call and stays."""
    import torch

    threads = torch.get_num_threads()
    environ = dict(os.environ)
    main = threading.current_thread() is threading.main_thread()
    handlers = {s: signal.getsignal(s) for s in SIGNALS} if main else {}
    try:
        yield
    finally:
        if torch.get_num_threads() != threads:
            torch.set_num_threads(threads)
        for key in set(os.environ) - set(environ):
            del os.environ[key]
        for key, value in environ.items():
            if os.environ.get(key) != value:
                os.environ[key] = value
        for number, handler in handlers.items():
            if signal.getsignal(number) is not handler and handler is not None:
                signal.signal(number, handler)


@takes_fields(GenerateConfig, CEStore)
def generate(**fields: Any) -> CEStore:
    """Create or resume a store, as `python -m cejobs.generate` does; the store.

    The store is returned also when some shards failed (`store.done()` says which are done);
    the CLI's messages go to the `cejobs` logger. A bad value raises ConfigError (a
    cejobs.errors.CejobsError) with the CLI's one-line message."""
    from cejobs.drivers.generate import run_generate

    config = typed(GenerateConfig, fields)
    with kept_process_state():
        store, _ = run_generate(config, hints=False)
    return store


@takes_fields(EvaluateConfig, dict[str, pd.DataFrame])
def evaluate(**fields: Any) -> dict[str, pd.DataFrame]:
    """Evaluate stores with classifiers, as `python -m cejobs.evaluate` does (it writes the
    same files); the tables of tables/*.csv as DataFrames, by name. A bad value raises
    ConfigError (a cejobs.errors.CejobsError) with the CLI's one-line message."""
    from cejobs.drivers.evaluate import run_evaluate
    from cejobs.eval.report import tables

    config = typed(EvaluateConfig, fields)
    with kept_process_state():
        results, _ = run_evaluate(config)
    return tables(results)


@dataclass
class StoreData:
    """A store as labelled data."""

    store: CEStore
    tree: Any  # xarray.DataTree: every array, lazily read, labelled (see `labelled_tree`)
    ces: pd.DataFrame  # one row per CE of the done shards, with its distances (and eval probs)
    distances: pd.DataFrame  # L2 and L0 quantiles per CE group (same, different, all classes)

    def __repr__(self) -> str:
        """One short line: the store's summary and the number of CE rows."""
        return f"StoreData({self.store.summary()}; {len(self.ces)} CE rows)"


def variable_order(names: list[str], prefix: str) -> list[str]:
    """Variables of the group `prefix` in docs/store.md's order (then the rest by name), so
    the view is the same whatever order the storage lists its keys in."""
    from cejobs.store.layout import EVAL_ARRAYS, generation_arrays

    known = [n.removeprefix(f"{prefix}/") for n in generation_arrays() if n.startswith(prefix)]
    if prefix.startswith("eval/"):
        known = list(EVAL_ARRAYS)
    return [n for n in known if n in names] + sorted(n for n in names if n not in known)


def labelled_tree(store: CEStore, tree: Any) -> Any:
    """The store's DataTree with labels on the CEs, and its variables in a stable order.

    The `ce` group's `ce` dimension is indexed by (`target`, `replicate`): CE k of every source
    was guided to class k // per_class (docs/store.md), so `tree["ce"].x.sel(target=3)` is
    every source's CEs towards class 3, dims (source, replicate, ...). Its `source` dimension
    has the coordinates `source_index` (the index in the dataset split) and `label` (the
    source's class). ce/target, being that index broadcast over sources, is the `target`
    coordinate rather than a variable. Nothing is read but the sources' labels and indices."""
    import xarray as xr

    lay = store.layout
    per_class = lay.ces_per_source // lay.num_classes
    nodes = {}
    for node in tree.subtree:
        prefix = node.path.strip("/")
        data = node.to_dataset(inherit=False)
        if prefix == "ce":
            ce_index = pd.MultiIndex.from_arrays(
                [np.repeat(np.arange(lay.num_classes), per_class),
                 np.tile(np.arange(per_class), lay.num_classes)], names=["target", "replicate"])
            data = data.drop_vars("target").assign_coords(
                xr.Coordinates.from_pandas_multiindex(ce_index, "ce"))
            data = data.assign_coords(source_index=("source", store.read_rows("source/index")),
                                      label=("source", store.read_rows("source/y")))
        order = variable_order(list(data.data_vars), prefix)
        nodes[node.path] = data[order] if order else data
    return xr.DataTree.from_dict(nodes)


def load_classifier(spec: str, dataset: str | None = None, *, data_root: str | None = None,
                    image_shape: tuple[int, int, int] | None = None,
                    num_classes: int | None = None, device: str = "cpu"):
    """The classifier of `spec` as the evaluation workers use it: a cejobs checkpoint path, or
    `torchvision:ARCH@WEIGHTS`, `timm:ARCH@WEIGHTS`, `robustbench:NAME@MODEL_DIR` (options
    `;mean=...;std=...`; docs/models.md, "Your own classifier"), in eval mode, taking images in
    [0, 1]. torchvision and timm models take their input channels and classes from `dataset`
    (a dataset name, e.g. "digits") or from `image_shape` (C, H, W) and `num_classes`."""
    from cejobs.data import load_dataset
    from cejobs.models.classifiers import load_classifier as load

    if dataset is not None and (image_shape is None or num_classes is None):
        images = load_dataset(dataset, data_root, "test")
        image_shape = image_shape or tuple(images.image_shape)
        num_classes = num_classes or images.num_classes
    return load(spec, image_shape, num_classes, map_location=device).model


def open_store(path: str | Path) -> StoreData:
    """A store as an xarray DataTree, and pandas frames of its CEs and their distances."""
    import xarray as xr

    from cejobs.eval.metrics import distance_summary
    from cejobs.eval.report import StoreResult, distance_table
    from cejobs.store.layout import eval_prefix

    store = CEStore.open(path)
    tree = labelled_tree(store, xr.open_datatree(store.storage.zarr_store(read_only=True),
                                                 engine="zarr", consolidated=False))
    lay = store.layout
    rows = np.flatnonzero(np.repeat(store.done(), lay.shard_size)[:lay.num_sources])
    k = lay.ces_per_source
    y = store.read_rows("source/y")
    frame = {
        "source": np.repeat(rows, k),
        "ce": np.tile(np.arange(k), len(rows)),
        "source_index": np.repeat(store.read_rows("source/index")[rows], k),
        "label": np.repeat(y[rows], k),
    }
    extras = sorted(n for n in store.attrs["arrays"] if n.startswith("ce/")
                    and n not in ("ce/x", "ce/target", "ce/l2", "ce/l0"))
    for name in ["ce/target", "ce/l2", "ce/l0", *extras]:
        frame[name.removeprefix("ce/")] = store.read_rows(name)[rows].reshape(-1)
    for name in store.eval_names():  # its storage: a folder, or a prefix in object storage
        if store.storage.kind(f"{eval_prefix(name)}/zarr.json") == "file":
            prefix = eval_prefix(name)
            prob = store.read_rows(f"{prefix}/ce_prob")[rows]  # (n, K, classes)
            target = frame["target"].reshape(len(rows), k)
            frame[f"p_target_{name}"] = np.take_along_axis(
                prob, target[..., None], axis=-1).reshape(-1)
    ces = pd.DataFrame(frame)
    valid = np.zeros(lay.num_sources, dtype=bool)
    valid[rows] = True
    summary = distance_summary(y, store.read_rows("ce/target"), store.read_rows("ce/l2"),
                               store.read_rows("ce/l0"), valid, num_classes=lay.num_classes,
                               shard_size=lay.shard_size)
    label = store.storage.name.removesuffix(".zarr")
    distances = distance_table([StoreResult(label, summary, {}, str(store.storage), {})])
    return StoreData(store, tree, ces, distances)


def load_model(model: str | Path, uncond_model: str | Path | None = None) -> tuple[Any, dict]:
    """(eps-network, metadata) of a `--model` spec, as the workers load it: a torch module
    called as eps(x, t, y) in model space, t in [eps, 1], y in 0..C with C the null label;
    the metadata has image_shape, num_classes, centered, kind, files (name -> sha256 of every
    file it was built from) and sha256. `uncond_model`: the unconditional network of a pair.
    Every kind of docs/models.md: a cejobs checkpoint, a diffusers folder, a converted EDM
    folder, `py:package.module:factory`."""
    from cejobs.models.spec import load_model as load_spec

    loaded = load_spec(str(model), str(uncond_model) if uncond_model else None)
    return loaded.model, {**loaded.meta, "sha256": loaded.sha256}
