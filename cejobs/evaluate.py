"""`python -m cejobs.evaluate`: run classifiers over CE stores, then metrics, tables and figures.

1. Check every input before any work: stores complete (or `--allow-partial`), classifiers fit
   the stores' image shape and classes, and a classifier name already in a store has the same
   checkpoint sha256.
2. Per store: the driver creates `eval/<name>/` for each classifier, then one ShardTask
   ("evaluate") covering all classifiers runs the generation-done shards that some classifier
   has not evaluated yet, on the chosen backend. Re-running resumes, like generate.
3. One pass over each store's (N, K)-sized arrays computes the metrics (cejobs.eval.metrics) and
   writes summary.json, tables/*.csv, report.md and figures/*.png (docs/evaluation.md).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import zarr
from tqdm import tqdm

from cejobs.backends import make_backend
from cejobs.config import (BACKENDS, REPO_DATA, ConfigError, GenerateConfig, ArgParser,
                           add_field_flags, config_from, execution_fields)
from cejobs.eval import figures as F
from cejobs.eval import metrics as M
from cejobs.eval import report as R
from cejobs.models.checkpoint import load_checkpoint
from cejobs.store import ATTRS_KEY, CEStore, StoreError, create_eval_arrays
from cejobs.tasks import ShardResult, ShardTask

SHIPPED_DIGITS = REPO_DATA / "digits"  # classifier-<name>.pt: the default classifiers on digits
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]*")  # a classifier name is one path segment
GRID_SOURCES = 8  # sources drawn in each store's CE grid


@dataclass(frozen=True)
class Classifier:
    name: str  # its label, and its group eval/<name> in every store
    path: Path
    sha256: str
    image_shape: tuple[int, ...]
    num_classes: int


# ---------------------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    p = ArgParser(prog="python -m cejobs.evaluate",
                description="Run classifiers over CE stores (writing eval/<name>/ into each "
                            "store, sharded and resumable), then write summary.json, "
                            "tables/*.csv, report.md and figures/*.png.")
    p.add_argument("--store", action="append", required=True, metavar="PATH",
                   help="a store made by python -m cejobs.generate; repeat to compare stores "
                        "(their labels are the folder names without .zarr)")
    p.add_argument("--classifier", action="append", metavar="NAME=CKPT",
                   help="a classifier checkpoint and its name; repeat for several (default: "
                        "data/digits/classifier-*.pt, named by file stem without "
                        "'classifier-', for digits stores)")
    p.add_argument("--out", default=None,
                   help="output folder (default: the first store's path with .zarr replaced "
                        "by .eval, e.g. runs/digits-boltzmann.eval)")
    p.add_argument("--allow-partial", action="store_true",
                   help="evaluate only the finished shards of unfinished stores; the report "
                        "says which part was evaluated")
    p.add_argument("--figures", default=argparse.SUPPRESS, action=argparse.BooleanOptionalAction,
                   help="draw figures/*.png (default: on)")
    p.add_argument("--backend", default="local", choices=BACKENDS,
                   help="where shards run; one process is enough for small stores "
                        "(default: local)")
    add_field_flags(p, [f for f in execution_fields() if f != "backend"])
    return p


def parse_classifier_flags(items: list[str]) -> dict[str, Path]:
    out: dict[str, Path] = {}
    for item in items:
        name, sep, path = item.partition("=")
        if not sep or not path:
            raise ConfigError(f"--classifier must look like NAME=CKPT (got {item!r})")
        if not NAME_RE.fullmatch(name):
            raise ConfigError(f"classifier name {name!r} must be letters, digits and _.+- "
                              f"(it names the folder eval/<name> in the store)")
        if name in out:
            raise ConfigError(f"classifier name {name!r} is given twice")
        out[name] = Path(path)
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


def default_out(store_path: Path) -> Path:
    """runs/x.zarr -> runs/x.eval (x.eval beside a store without the .zarr suffix)."""
    stem = store_path.name.removesuffix(".zarr")
    return store_path.parent / f"{stem}.eval"


def store_labels(paths: list[Path]) -> list[str]:
    """Unique labels: folder names without .zarr, prefixed by their parent on a clash."""
    labels = [p.name.removesuffix(".zarr") for p in paths]
    for i, p in enumerate(paths):
        if labels.count(labels[i]) > 1:
            labels[i] = f"{p.resolve().parent.name}-{labels[i]}"
    return [lab if labels.count(lab) == 1 else f"{lab}-{i}" for i, lab in enumerate(labels)]


# ---------------------------------------------------------------------------- checks
def load_classifiers(paths: dict[str, Path]) -> list[Classifier]:
    out = []
    for name, path in paths.items():
        ckpt = load_checkpoint(path, expect_kind="classifier")
        out.append(Classifier(name, path, ckpt.sha256, tuple(ckpt.meta["image_shape"]),
                              int(ckpt.meta["num_classes"])))
    return out


def recorded_sha256(store: CEStore, name: str) -> str | None:
    if not (store.path / "eval" / name / "zarr.json").exists():
        return None
    group = zarr.open_group(str(store.path), path=f"eval/{name}", mode="r")
    return dict(group.attrs).get(ATTRS_KEY, {}).get("sha256")


def check_inputs(stores: list[CEStore], classifiers: list[Classifier], allow_partial: bool) -> None:
    """Raise ConfigError (one line) on the first input that can't be evaluated as asked."""
    for store in stores:
        lay = store.layout
        for c in classifiers:
            if c.image_shape != tuple(lay.image_shape) or c.num_classes != lay.num_classes:
                raise ConfigError(
                    f"classifier {c.name} ({c.path}) is for images {c.image_shape} with "
                    f"{c.num_classes} classes, but {store.path} has {tuple(lay.image_shape)} "
                    f"with {lay.num_classes} classes")
            recorded = recorded_sha256(store, c.name)
            if recorded is not None and recorded != c.sha256:
                raise ConfigError(
                    f"{store.path} already has eval/{c.name} from a checkpoint with sha256 "
                    f"{recorded[:12]}, but {c.path} has {c.sha256[:12]}; give it another name")
        done = store.done()
        if not done.any():
            raise ConfigError(f"{store.path} has no finished shard (0 of {done.size}); "
                              f"run python -m cejobs.generate first")
        if not done.all() and not allow_partial:
            raise ConfigError(
                f"{store.path} is incomplete ({int(done.sum())} of {done.size} shards done); "
                f"finish it with python -m cejobs.generate, or pass --allow-partial")


# ---------------------------------------------------------------------------- running
class Progress:
    """One bar over the shards of every store; errors collected for the end."""

    def __init__(self, total: int, enabled: bool):
        self.label = ""
        self.ces = self.shards = 0
        self.errors: list[str] = []
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, unit="shard", desc="evaluate", disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr)

    def __call__(self, result: ShardResult) -> None:
        if result.ok:
            self.ces += result.ces
            self.shards += 1
            rate = self.ces / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{self.label}, {rate:.0f} CE/s", refresh=False)
            self.bar.update(1)
        else:
            self.errors.append(f"{self.label} shard {result.shard} failed: "
                               f"{result.error.strip()}")
            tqdm.write(self.errors[-1].splitlines()[0], file=sys.stderr)

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.start


def pending_shards(store: CEStore, classifiers: list[Classifier]) -> list[int]:
    """Generation-done shards that at least one classifier has not evaluated."""
    todo = np.zeros(store.num_shards, dtype=bool)
    for c in classifiers:
        todo |= ~store.done(f"eval/{c.name}")
    return [int(s) for s in np.flatnonzero(todo & store.done())]


# ---------------------------------------------------------------------------- metrics
def _rows_mask(done: np.ndarray, shard_size: int, n: int) -> np.ndarray:
    return np.repeat(done, shard_size)[:n]


def _info(store: CEStore, labels: dict[str, str]) -> dict:
    cfg = store.config
    dataset = str(cfg.get("dataset"))
    if dataset.startswith("store:"):  # CEs of CEs: name the earlier store by its label
        src = Path(dataset[len("store:"):])
        name = labels.get(str(src.resolve()), src.name.removesuffix(".zarr"))
        return {"method": cfg.get("method"), "dataset": f"CEs of {name}", "split": "-"}
    return {"method": cfg.get("method"), "dataset": dataset, "split": cfg.get("split")}


def evaluate_store(store: CEStore, label: str, classifiers: list[Classifier],
                   info: dict) -> tuple[R.StoreResult, dict]:
    """Metrics of one store from its (N, K)-sized arrays; also the arrays the figures need."""
    lay = store.layout
    n = lay.num_sources
    gen_valid = _rows_mask(store.done(), lay.shard_size, n)
    y, t = store.read_rows("source/y"), store.read_rows("ce/target")
    l2, l0 = store.read_rows("ce/l2"), store.read_rows("ce/l0")
    distances = M.distance_summary(y, t, l2, l0, gen_valid, num_classes=lay.num_classes,
                                   shard_size=lay.shard_size)
    d = M.mean_different_class_distance(y, t, l2)
    per_clf, scatter = {}, {}
    for c in classifiers:
        prefix = f"eval/{c.name}"
        valid = gen_valid & _rows_mask(store.done(prefix), lay.shard_size, n)
        sp = store.read_rows(f"{prefix}/source_prob")
        cp = store.read_rows(f"{prefix}/ce_prob")
        s = M.summarize(y, t, l2, sp, cp, valid, shard_size=lay.shard_size)
        per_clf[c.name] = s
        keep = valid & np.isfinite(d)
        yk = y[keep]
        conf = sp[keep][np.arange(len(yk)), yk]
        correct = np.argmax(sp[keep], axis=-1) == yk
        scatter[c.name] = (d[keep], conf, s["proximity_confidence"], correct)
    same = t == y[:, None]
    plots = {"hist": (l2[gen_valid], l0[gen_valid], same[gen_valid]), "scatter": scatter,
             "grid_rows": np.flatnonzero(gen_valid)[:GRID_SOURCES]}
    return R.StoreResult(label, distances, per_clf, str(store.path), info), plots


def _file_label(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.+-]+", "-", label)


def draw_figures(out: Path, stores: list[CEStore], results: list[R.StoreResult],
                 plots: list[dict]) -> list[str]:
    """figures/*.png; returns their paths relative to `out`, for report.md."""
    fig_dir = out / "figures"
    paths = [F.plot_distance_histograms(fig_dir / "distance_histograms.png",
                                        {r.name: p["hist"] for r, p in zip(results, plots)})]
    table = R.accuracy_table(results)
    if not table.empty:
        paths.append(F.plot_accuracy_bars(fig_dir / "accuracy_bars.png", table))
    for store, r, p in zip(stores, results, plots):
        tag = _file_label(r.name)
        if p["scatter"]:
            paths.append(F.plot_confidence_vs_distance(
                fig_dir / f"confidence_vs_distance-{tag}.png",
                {f"{name} ({r.name})": v for name, v in p["scatter"].items()}))
        rows = p["grid_rows"]
        paths.append(F.plot_ce_grid(
            fig_dir / f"ce_grid-{tag}.png",
            np.asarray(store.array("source/x").oindex[rows]),
            np.asarray(store.array("source/y").oindex[rows]),
            np.asarray(store.array("ce/x").oindex[rows], dtype=np.float32),
            np.asarray(store.array("ce/target").oindex[rows]),
            np.asarray(store.array("ce/l2").oindex[rows]), max_sources=GRID_SOURCES))
    return [str(Path(p).relative_to(out)) for p in paths]


# ---------------------------------------------------------------------------- main
@dataclass
class EvalJob:
    """A checked evaluation: what `prepare` returns; nothing written yet."""

    paths: list[Path]  # the stores as given
    stores: list[CEStore]
    labels: list[str]  # unique store labels for tables and figures
    classifiers: list[Classifier]
    configs: list[GenerateConfig]  # per store: the execution flags (backend, device, ...)
    out: Path
    figures: bool


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


def prepare(argv: list[str] | None) -> EvalJob:
    """Parse and check everything (ConfigError, one line, on the first problem); write nothing."""
    args = vars(build_parser().parse_args(argv))
    paths = [Path(s) for s in args.pop("store")]
    clf_args, out_arg = args.pop("classifier"), args.pop("out")
    allow_partial, figures = args.pop("allow_partial"), args.pop("figures", True)
    if len({p.resolve() for p in paths}) != len(paths):
        raise ConfigError("a store is given twice with --store")
    stores = [CEStore.open(p) for p in paths]
    clf_paths = parse_classifier_flags(clf_args) if clf_args else default_classifier_paths(stores)
    classifiers = load_classifiers(clf_paths)
    check_inputs(stores, classifiers, allow_partial)
    configs = [config_from({**args, "store": str(p)}) for p in paths]
    out = Path(out_arg) if out_arg else default_out(paths[0])
    return EvalJob(paths, stores, store_labels(paths), classifiers, configs, out, figures)


def create_tasks(job: EvalJob) -> list[ShardTask]:
    """Driver only: create eval/<name>/ of every classifier in every store; one task per store."""
    tasks = []
    for store, config in zip(job.stores, job.configs):
        for c in job.classifiers:
            create_eval_arrays(store, c.name, {"classifier": c.name,
                                               "path": str(c.path.resolve()), "sha256": c.sha256})
        options = {"classifiers": {c.name: {"path": str(c.path.resolve()), "sha256": c.sha256}
                                   for c in job.classifiers}}
        tasks.append(ShardTask("evaluate", str(store.path.resolve()), config.to_dict(), options))
    return tasks


def main(argv: list[str] | None = None) -> int:
    job = prepare(argv)
    try:
        job.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {job.out}: {e.strerror or e}") from None
    tasks = create_tasks(job)

    # --- the shards not yet evaluated, store after store
    todo = [pending_shards(s, job.classifiers) for s in job.stores]
    total = sum(map(len, todo))
    print(f"{total} shard(s) to evaluate in {len(job.stores)} store(s) with "
          f"{len(job.classifiers)} classifier(s) ({', '.join(c.name for c in job.classifiers)})"
          f" on backend '{job.configs[0].backend}'", file=sys.stderr)
    progress = Progress(total, job.configs[0].progress)
    for task, label, config, shards in zip(tasks, job.labels, job.configs, todo):
        progress.label = label
        if shards:
            make_backend(config).run(task, shards, progress)
    seconds = progress.close()
    print(f"evaluated {progress.ces} CEs x classifiers in {progress.shards} shard(s), "
          f"{seconds:.1f} s ({progress.ces / max(seconds, 1e-9):.0f} CE/s)")

    # --- one pass: metrics, tables, report, figures
    by_path = {str(p.resolve()): label for p, label in zip(job.paths, job.labels)}
    results, plots = [], []
    for store, label in zip(job.stores, job.labels):
        r, p = evaluate_store(store, label, job.classifiers, _info(store, by_path))
        results.append(r)
        plots.append(p)
    figures = draw_figures(job.out, job.stores, results, plots) if job.figures else []
    written = R.write_outputs(job.out, results, tuple(figures))
    print(R.format_table(results))
    print(f"report: {written['report']}  summary: {written['summary']}  tables: "
          f"{job.out / 'tables'}" + (f"  figures: {job.out / 'figures'}" if figures else ""))
    for line in progress.errors:
        print(line, file=sys.stderr)
    missing = sum(len(pending_shards(s, job.classifiers)) for s in job.stores)
    if missing:
        print(f"incomplete: {missing} shard(s) not evaluated; run the same command to resume",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    from cejobs.cli import run_cli

    run_cli(main)
