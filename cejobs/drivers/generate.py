"""The generate driver: plan a run, create or resume its store, run its shards on the chosen
backend (`python -m cejobs.generate` and `cejobs.generate(...)` both run `run_generate`).

Re-running the same command resumes: only shards not done are run (and done shards that the
store's repair policy finds damaged). A store made with a different configuration or
checkpoint is refused before anything is written.
"""

from __future__ import annotations

import logging
import shlex

from cejobs.backends import Backend, make_ready_backend
from cejobs.data import load_dataset
from cejobs.jobs.methods import METHODS
from cejobs.drivers.progress import Progress
from cejobs.errors import ConfigError
from cejobs.jobs.config import GenerateConfig
from cejobs.jobs.kinds import KINDS, pending_shards
from cejobs.store.layout import Layout, generation_arrays
from cejobs.jobs.plan import make_plan
from cejobs.store.lease import DriverLease
from cejobs.store.repair import repair
from cejobs.store.create import create_or_open
from cejobs.store.format import OLD_FORMATS
from cejobs.store.store import CEStore
from cejobs.jobs.tasks import ShardTask

log = logging.getLogger(__name__)
output = logging.getLogger("cejobs.output")  # a command's results (cejobs.cli)


def check_checkpoint(config: GenerateConfig, dataset) -> dict[str, str]:
    """Load the run's model once, check it fits the dataset; return its identity fields
    (checksum; for a diffusion model other than a cejobs checkpoint, its kind and files)."""
    method = METHODS[config.method]
    path = config.classifier if method.checkpoint == "classifier" and config.classifier \
        else method.checkpoint_path(config)
    ckpt = method.load_network(config, dataset.image_shape, dataset.num_classes)
    shape = tuple(ckpt.meta["image_shape"])
    if shape != tuple(dataset.image_shape) or ckpt.meta["num_classes"] != dataset.num_classes:
        raise ConfigError(
            f"{method.flag} {path} is for images {shape} with {ckpt.meta['num_classes']} "
            f"classes, but {config.dataset} has {tuple(dataset.image_shape)} with "
            f"{dataset.num_classes} classes"
            + (" (give --resize N)" if config.dataset.startswith("imagefolder:")
               and shape[1:] != tuple(dataset.image_shape)[1:] else "")
        )
    return method.checksums(ckpt)


def prepare(config: GenerateConfig) -> CEStore:
    """Everything before the work: dataset, checkpoint, plan, then create or open the store.
    The identity records the sources' content (`sources_sha256`), so a changed dataset file
    is refused on resume."""
    dataset = load_dataset(config.dataset, config.data_root, config.split, config.resize)
    checksum = check_checkpoint(config, dataset)
    plan = make_plan(config, len(dataset), dataset.num_classes)
    layout = Layout(plan.num_sources, plan.ces_per_source, plan.num_classes,
                    tuple(dataset.image_shape), plan.shard_size)
    identity = {**config.identity(), **checksum,
                "sources_sha256": dataset.sources_sha256(plan.source_index)}
    if dataset.classes is not None:  # an image folder's class order (sorted folder names)
        identity["dataset_classes"] = list(dataset.classes)
    arrays = generation_arrays(config.ce_dtype, METHODS[config.method].arrays)
    store = create_or_open(config.resolved_store(), identity, layout, arrays,
                           dict(config=config.to_dict(), kind="generate"))
    if store.format in OLD_FORMATS:
        log.warning(f"note: {store.storage} is a {store.format} store (an older cejobs): it "
                    f"records no chunk checksums and no hash of the sources, so changed bytes "
                    f"or a changed dataset file can't be detected in it")
    return store


def run_generate(config: GenerateConfig, hints: bool = True) -> tuple[CEStore, int]:
    """Create or resume the store of `config` and run what is left; the store, and the exit
    status: 0 when every shard is done, 1 when some are not. `hints`: end with the command
    line that evaluates the store (the CLI's; the API says none)."""
    backend = make_ready_backend(config)
    store = prepare(config)
    with DriverLease(store, "generate"):
        return _run(config, store, backend, hints)


def _run(config: GenerateConfig, store: CEStore, backend: Backend,
         hints: bool) -> tuple[CEStore, int]:
    found = repair(store)
    for line in found.lines():
        log.warning(line)
    if found.generation:
        log.warning(f"redoing {len(found.generation)} damaged shard(s): {found.generation}")
    where = store.storage
    task = ShardTask(KINDS["generate"], str(where.resolve()), config)
    pending = pending_shards(store, task)
    if not pending:
        output.info(f"store complete: {where} ({store.num_shards}/{store.num_shards} "
                    f"shards); nothing to do")
        if hints:
            output.info(f"evaluate with: python -m cejobs.evaluate --store "
                        f"{shlex.quote(str(where))}")
        return store, 0
    log.info(f"{len(pending)} of {store.num_shards} shards to run on backend "
             f"'{config.backend}' -> {where}")
    progress = Progress(store.num_shards, config.progress, done=store.num_shards - len(pending))
    try:
        report = backend.run(task, pending, progress)
    finally:
        seconds = progress.close()
    done = int(store.done().sum())
    rate = progress.ces / max(seconds, 1e-9)
    output.info(f"generated {progress.ces} CEs in {len(report.done)} shards, {seconds:.1f} s "
                f"({rate:.2f} CE/s); {done}/{store.num_shards} shards done in {where}")
    for line in progress.errors:
        log.warning(line)
    if done < store.num_shards:
        log.warning(f"incomplete: {store.num_shards - done} shard(s) not done; run the same "
                    f"command to resume")
        return store, 1
    if hints:
        output.info(f"evaluate with: python -m cejobs.evaluate --store "
                    f"{shlex.quote(str(where))}")
    return store, 0

