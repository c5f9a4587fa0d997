"""The Python API: the same code as the CLIs, for notebooks.

    import cejobs
    store = cejobs.generate(sources=4, steps=20, backend="local", store="runs/demo.zarr")
    data = cejobs.open_store("runs/demo.zarr")   # data.tree (xarray), data.ces (pandas)
    tables = cejobs.evaluate(store=["runs/demo.zarr"], backend="local")

`generate` and `evaluate` are plain functions whose keyword-only parameters are the fields of
GenerateConfig and EvaluateConfig (the CLI's flags, with underscores), with their defaults:
`inspect.signature` and `help()` list them. A bad value raises ConfigError (a
cejobs.errors.CejobsError) with the CLI's one-line message.
"""

from __future__ import annotations

import dataclasses
import inspect
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


@takes_fields(GenerateConfig, CEStore)
def generate(**fields: Any) -> CEStore:
    """Create or resume a store, as `python -m cejobs.generate` does; the store.

    The store is returned also when some shards failed (`store.done()` says which are done);
    the messages the CLI prints are printed here too. A bad value raises ConfigError (a
    cejobs.errors.CejobsError) with the CLI's one-line message."""
    from cejobs.drivers.generate import run_generate

    store, _ = run_generate(typed(GenerateConfig, fields))
    return store


@takes_fields(EvaluateConfig, dict[str, pd.DataFrame])
def evaluate(**fields: Any) -> dict[str, pd.DataFrame]:
    """Evaluate stores with classifiers, as `python -m cejobs.evaluate` does (it writes the
    same files); the tables of tables/*.csv as DataFrames, by name. A bad value raises
    ConfigError (a cejobs.errors.CejobsError) with the CLI's one-line message."""
    from cejobs.drivers.evaluate import run_evaluate
    from cejobs.eval.report import tables

    results, _ = run_evaluate(typed(EvaluateConfig, fields))
    return tables(results)


@dataclass
class StoreData:
    """A store as labelled data."""

    store: CEStore
    tree: Any  # xarray.DataTree: every array, lazily read, with its dimension names
    ces: pd.DataFrame  # one row per CE of the done shards, with its distances (and eval probs)
    distances: pd.DataFrame  # L2 and L0 quantiles per CE group (same, different, all classes)


def open_store(path: str | Path) -> StoreData:
    """A store as an xarray DataTree, and pandas frames of its CEs and their distances."""
    import xarray as xr

    from cejobs.eval.metrics import distance_summary
    from cejobs.eval.report import StoreResult, distance_table
    from cejobs.store.layout import eval_prefix

    store = CEStore.open(path)
    tree = xr.open_datatree(store.storage.zarr_store(read_only=True), engine="zarr",
                            consolidated=False)
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
