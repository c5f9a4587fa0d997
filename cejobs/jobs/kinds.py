"""Job kinds: what fills a store, shard by shard. The one place that knows, per kind, its
worker, its arrays and their prefix, its claims namespace and its CE count.

Backends, the driver's progress and the SLURM claim loop ask the task's kind (`task.job`);
they never branch on a kind's name. A new job kind is a new `JobKind` subclass here, with its
worker, added to `KINDS`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np

from cejobs.store.layout import eval_prefix

if TYPE_CHECKING:
    from cejobs.jobs.tasks import ShardTask
    from cejobs.store.store import CEStore
    from cejobs.jobs.worker_inputs import WorkerInputs


class JobKind:
    """Stateless: one instance per kind, in KINDS; equal by name (also after pickling)."""

    name: str
    namespace: str  # SLURM claims live under <store>/claims/<namespace>/

    def __eq__(self, other: object) -> bool:
        return isinstance(other, JobKind) and other.name == self.name

    def __hash__(self) -> int:
        return hash(self.name)

    def make_worker(self, task: ShardTask, device: str | None = None,
                    inputs: WorkerInputs | None = None):
        """The worker of this kind; it loads its models once and runs many shards. `inputs`:
        the driver's files (Ray), else the worker reads them itself."""
        raise NotImplementedError

    def inputs(self, task: ShardTask) -> WorkerInputs:
        """Driver only: the files its workers read (checkpoints, the dataset), read here."""
        raise NotImplementedError

    def eligible_and_done(self, store: CEStore, task: ShardTask) -> tuple[np.ndarray, np.ndarray]:
        """(eligible, done) per shard, read fresh from the store."""
        raise NotImplementedError

    def timing_prefix(self, task: ShardTask) -> str:
        """Where the shard timings (started_at, finished_at) of this kind are."""
        raise NotImplementedError

    def ce_factor(self, task: ShardTask) -> int:
        """Results per CE of a shard (one per classifier for evaluate)."""
        return 1



class Generate(JobKind):
    name, namespace = "generate", "shard"

    def make_worker(self, task, device=None, inputs=None):
        from cejobs.jobs.generate_worker import GenerateWorker

        return GenerateWorker(task, device, inputs=inputs)

    def inputs(self, task):
        from cejobs.data import load_dataset
        from cejobs.jobs.methods import METHODS
        from cejobs.jobs.worker_inputs import WorkerInputs

        config = task.config
        dataset = (None if config.dataset.startswith("store:")  # workers read the store
                   else load_dataset(config.dataset, config.data_root, config.split,
                                     config.resize))
        return WorkerInputs.read(METHODS[config.method].model_files(config), dataset)

    def eligible_and_done(self, store, task):
        done = store.done("shard")
        return np.ones_like(done), done

    def timing_prefix(self, task):
        return "shard"



class Evaluate(JobKind):
    """task.options["classifiers"]: name -> {"path", "sha256", "spec"}, each written to
    eval/<name>."""

    name, namespace = "evaluate", "eval"

    def make_worker(self, task, device=None, inputs=None):
        from cejobs.jobs.evaluate_worker import EvaluateWorker

        return EvaluateWorker(task, device, inputs=inputs)

    def inputs(self, task):
        from cejobs.jobs.worker_inputs import WorkerInputs

        return WorkerInputs.read([c["path"] for c in task.options["classifiers"].values()])

    def eligible_and_done(self, store, task):
        eligible = store.done("shard")  # only generated shards can be evaluated
        done = np.ones_like(eligible)
        for name in task.options["classifiers"]:
            done &= store.done(eval_prefix(name))
        return eligible, done

    def timing_prefix(self, task):
        return eval_prefix(next(iter(task.options["classifiers"])))

    def ce_factor(self, task):
        return len(task.options["classifiers"])



KINDS: dict[str, JobKind] = {kind.name: kind for kind in (Generate(), Evaluate())}


def pending_shards(store: CEStore, task: ShardTask) -> list[int]:
    """Shards of `task` that may run and are not done."""
    eligible, done = task.job.eligible_and_done(store, task)
    return [int(s) for s in np.flatnonzero(eligible & ~done)]
