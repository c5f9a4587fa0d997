"""`python -m cejobs.generate`: plan a run, create or resume its store, run its shards.

Re-running the same command resumes: only shards not done are run. A store made with a
different configuration or checkpoint is refused before anything is written.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

from tqdm import tqdm

from cejobs.backends import make_backend
from cejobs.config import ConfigError, GenerateConfig, parse_generate_args
from cejobs.data import load_dataset
from cejobs.models.checkpoint import load_checkpoint
from cejobs.plan import make_plan
from cejobs.store import CEStore, Layout, create_or_open, generation_arrays
from cejobs.tasks import ShardResult, ShardTask


def check_checkpoint(config: GenerateConfig, dataset) -> dict[str, str]:
    """Load the run's checkpoint once, check it fits the dataset; return its checksum field."""
    robust = config.method == "robust"
    path = config.resolved_classifier() if robust else config.resolved_model()
    kind = "classifier" if robust else "diffusion"
    flag = "--classifier" if robust else "--model"
    ckpt = load_checkpoint(path, expect_kind=kind)
    shape = tuple(ckpt.meta["image_shape"])
    if shape != tuple(dataset.image_shape) or ckpt.meta["num_classes"] != dataset.num_classes:
        raise ConfigError(
            f"{flag} {path} is for images {shape} with {ckpt.meta['num_classes']} classes, "
            f"but {config.dataset} has {tuple(dataset.image_shape)} with "
            f"{dataset.num_classes} classes"
        )
    return {f"{'classifier' if robust else 'model'}_sha256": ckpt.sha256}


def prepare(config: GenerateConfig) -> CEStore:
    """Everything before the work: dataset, checkpoint, plan, then create or open the store."""
    dataset = load_dataset(config.dataset, config.data_root, config.split)
    checksum = check_checkpoint(config, dataset)
    plan = make_plan(config, len(dataset), dataset.num_classes)
    layout = Layout(plan.num_sources, plan.ces_per_source, plan.num_classes,
                    tuple(dataset.image_shape), plan.shard_size)
    identity = {**config.identity(), **checksum}
    arrays = generation_arrays(config.ce_dtype, robust=config.method == "robust")
    return create_or_open(config.resolved_store(), identity, layout, arrays,
                          dict(config=config.to_dict(), kind="generate"))


def shards_to_run(store: CEStore) -> list[int]:
    """Shards not done, plus done shards with a missing chunk or a `*.partial` leftover."""
    done = store.done()
    suspect = set()
    names = store.attrs["arrays"]
    for shard in map(int, done.nonzero()[0]):
        if any(not store.chunk_path(name, shard).exists() for name in names):
            suspect.add(shard)
    suspect |= {s for p in store.partial_leftovers() if (s := store.shard_of_partial(p)) is not None}
    if suspect:
        store.clear_done(sorted(suspect))
        print(f"redoing {len(suspect)} damaged shard(s): {sorted(suspect)}", file=sys.stderr)
    return store.pending_shards()


class Progress:
    """Shards done, CEs/s and ETA while shards finish; a summary at the end."""

    def __init__(self, store: CEStore, pending: int, enabled: bool):
        self.total = store.num_shards
        self.ces_per_shard = store.layout.shard_size * store.layout.ces_per_source
        self.ces = 0
        self.start = time.perf_counter()
        self.errors: list[str] = []
        self.bar = tqdm(total=self.total, initial=self.total - pending, unit="shard",
                        desc="shards", disable=not enabled, dynamic_ncols=True, file=sys.stderr)

    def __call__(self, result: ShardResult) -> None:
        if result.ok:
            self.ces += result.ces
            rate = self.ces / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{rate:.2f} CE/s", refresh=False)
            self.bar.update(1)
        else:
            self.errors.append(f"shard {result.shard} failed: {result.error.strip()}")
            tqdm.write(self.errors[-1].splitlines()[0], file=sys.stderr)

    def close(self) -> float:
        self.bar.close()
        return time.perf_counter() - self.start


def main(argv: list[str] | None = None) -> int:
    config = parse_generate_args(argv)
    store = prepare(config)
    pending = shards_to_run(store)
    path = store.path
    if not pending:
        print(f"store complete: {path} ({store.num_shards}/{store.num_shards} shards); "
              f"nothing to do")
        print(f"evaluate with: python -m cejobs.evaluate --store {_quote(path)}")
        return 0
    print(f"{len(pending)} of {store.num_shards} shards to run on backend "
          f"'{config.backend}' -> {path}", file=sys.stderr)
    task = ShardTask("generate", str(path.resolve()), config.to_dict())
    progress = Progress(store, len(pending), config.progress)
    report = make_backend(config).run(task, pending, progress)
    seconds = progress.close()
    done = int(store.done().sum())
    rate = progress.ces / max(seconds, 1e-9)
    print(f"generated {progress.ces} CEs in {len(report.done)} shards, {seconds:.1f} s "
          f"({rate:.2f} CE/s); {done}/{store.num_shards} shards done in {path}")
    for line in progress.errors:
        print(line, file=sys.stderr)
    if done < store.num_shards:
        print(f"incomplete: {store.num_shards - done} shard(s) not done; run the same command "
              f"to resume", file=sys.stderr)
        return 1
    print(f"evaluate with: python -m cejobs.evaluate --store {_quote(path)}")
    return 0


def _quote(path: Path) -> str:
    import shlex

    return shlex.quote(str(path))


if __name__ == "__main__":
    from cejobs.cli import run_cli

    run_cli(main)
