"""The evaluate driver: run classifiers over CE stores, then metrics, tables and figures
(`python -m cejobs.evaluate` and `cejobs.evaluate(...)` both run `run_evaluate`).

1. Check every input before any work (cejobs.jobs.eval_inputs): stores complete (or
   `--allow-partial`), classifiers fit the stores' image shape and classes, and a classifier
   name already in a store has the same weights file sha256.
2. Per store, under its evaluate lease (cejobs.store.lease): the repair policy re-reads the
   store's eval arrays and resets exactly the damaged (classifier, shard) flags
   (cejobs.store.repair); the driver creates `eval/<name>/` for each classifier, then one
   "evaluate" task covering all classifiers runs the generation-done shards that some
   classifier has not evaluated yet, on the chosen backend. Re-running resumes, like generate.
3. One pass over each store's (N, K)-sized arrays (cejobs.jobs.assemble) writes summary.json,
   tables/*.csv, report.md and figures/*.png (docs/evaluation.md).
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import dataclass
from pathlib import Path

from cejobs.backends import make_ready_backend
from cejobs.eval.report import StoreResult, format_table
from cejobs.jobs.assemble import assemble
from cejobs.jobs.eval_inputs import (Classifier, check_inputs, default_classifier_paths,
                                     default_out, load_classifiers, parse_classifier_flags,
                                     store_labels)
from cejobs.drivers.progress import Progress
from cejobs.errors import ConfigError
from cejobs.jobs.config import EvaluateConfig, parse_evaluate_args
from cejobs.jobs.kinds import KINDS, pending_shards
from cejobs.store.lease import DriverLease
from cejobs.store.repair import repair
from cejobs.store.create import create_eval_arrays
from cejobs.store.location import location
from cejobs.store.storage import Storage
from cejobs.store.store import CEStore
from cejobs.jobs.tasks import ShardTask

log = logging.getLogger(__name__)
output = logging.getLogger("cejobs.output")  # a command's results (cejobs.cli)


@dataclass
class EvalJob:
    """A checked evaluation: what `prepare` returns; nothing written yet."""

    config: EvaluateConfig
    paths: list[Storage]  # the stores as given
    stores: list[CEStore]
    labels: list[str]  # unique store labels for tables and figures
    classifiers: list[Classifier]
    out: Path


def prepare(config: EvaluateConfig | list[str] | None) -> EvalJob:
    """Check everything (ConfigError, one line, on the first problem); write nothing. Takes a
    config, or the command line's arguments."""
    if not isinstance(config, EvaluateConfig):
        config = parse_evaluate_args(config)
    paths = [location(s) for s in config.store]
    if len({p.resolve() for p in paths}) != len(paths):
        raise ConfigError("a store is given twice with --store")
    stores = [CEStore.open(p) for p in paths]
    clf_paths = (parse_classifier_flags(config.classifier) if config.classifier
                 else default_classifier_paths(stores))
    classifiers = load_classifiers(clf_paths, stores)
    check_inputs(stores, classifiers, config.allow_partial)
    out = Path(config.out) if config.out else default_out(paths[0])
    return EvalJob(config, paths, stores, store_labels(paths), classifiers, out)


def create_tasks(job: EvalJob) -> list[ShardTask]:
    """Driver only: create eval/<name>/ of every classifier in every store; one task per store."""
    tasks = []
    specs = {c.name: {"path": str(c.path.resolve()), "sha256": c.sha256, "spec": c.spec}
             for c in job.classifiers}
    for store in job.stores:
        for name, spec in specs.items():
            create_eval_arrays(store, name, {"classifier": name, **spec})
        tasks.append(ShardTask(KINDS["evaluate"], str(store.storage.resolve()), job.config,
                               {"classifiers": specs}))
    return tasks


def run_evaluate(config: EvaluateConfig) -> tuple[list[StoreResult], int]:
    """Evaluate what is left, then write the outputs; the results, and the exit status (0 when
    every shard is evaluated, 1 when some are not)."""
    backend = make_ready_backend(config)
    job = prepare(config)
    with contextlib.ExitStack() as leases:
        for store in job.stores:
            leases.enter_context(DriverLease(store, "evaluate"))
        return _run(config, job, backend)


def _run(config: EvaluateConfig, job: EvalJob, backend) -> tuple[list[StoreResult], int]:
    try:
        job.out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise ConfigError(f"cannot create --out {job.out}: {e.strerror or e}") from None
    for store in job.stores:  # evaluate's own arrays are re-read whole: they are small
        found = repair(store, decode_eval=True)
        for line in found.lines():
            log.warning(line)
        if found.damaged:
            log.warning(f"{store.storage}: {found.summary()}")
        check_inputs([store], job.classifiers, config.allow_partial)  # generation damage
    tasks = create_tasks(job)

    # --- the shards not yet evaluated, store after store
    todo = [pending_shards(s, t) for s, t in zip(job.stores, tasks)]
    total = sum(map(len, todo))
    names = ", ".join(c.name for c in job.classifiers)
    log.info(f"{total} shard(s) to evaluate in {len(job.stores)} store(s) with "
             f"{len(job.classifiers)} classifier(s) ({names}) on backend '{config.backend}'")
    progress = Progress(total, config.progress, desc="evaluate")
    try:
        for task, label, shards in zip(tasks, job.labels, todo):
            progress.label = label
            if shards:
                backend.run(task, shards, progress)
    finally:
        seconds = progress.close()
    output.info(f"evaluated {progress.ces} CEs x classifiers in {progress.shards} shard(s), "
                f"{seconds:.1f} s ({progress.ces / max(seconds, 1e-9):.0f} CE/s)")

    # --- one pass: metrics, tables, report, figures
    results, written = assemble(job.out, job.paths, job.stores, job.labels, job.classifiers,
                                config.figures)
    output.info(format_table(results))
    figures = f"  figures: {job.out / 'figures'}" if config.figures else ""
    output.info(f"report: {written['report']}  summary: {written['summary']}  tables: "
                f"{job.out / 'tables'}{figures}")
    for line in progress.errors:
        log.warning(line)
    missing = sum(len(pending_shards(s, t)) for s, t in zip(job.stores, tasks))
    if missing:
        log.warning(f"incomplete: {missing} shard(s) not evaluated; run the same command to "
                    f"resume")
        return results, 1
    return results, 0

