"""The generation worker: loads dataset and model once, then makes and stores shards of CEs.

A shard reads its sources, makes their CEs (`ce_maker.CEMaker`, compute only), writes its rows
of every array, then its done flag (docs/design.md §6-7). The same class runs in-process, in a
Ray actor and in a SLURM task. What differs between methods (checkpoint, extra arrays, how CEs
are made) comes from `cejobs.jobs.methods.METHODS`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cejobs.data import load_dataset
from cejobs.devices import resolve_device
from cejobs.hosts import worker_name
from cejobs.jobs.ce_maker import CEBatch, CEMaker
from cejobs.jobs.config import GenerateConfig
from cejobs.jobs.methods import METHODS, CEParams
from cejobs.jobs.plan import make_plan
from cejobs.jobs.results import ShardError, ShardResult
from cejobs.jobs.tasks import ShardTask
from cejobs.jobs.worker_inputs import WorkerInputs


class GenerateWorker:
    """Loads the dataset and the model once; `run_shard(s)` makes and stores shard s's CEs."""

    def __init__(self, task: ShardTask, device: str | None = None, *,
                 inputs: WorkerInputs | None = None):
        """inputs: the model's files and the dataset read by the driver (Ray); else read
        here."""
        from cejobs.store.store import CEStore  # zarr: only where the store is written

        self.config: GenerateConfig = task.config
        config = self.config
        method = METHODS[config.method]
        device = resolve_device(device or config.device)
        self.store = CEStore.open(task.store)
        self.dataset = (inputs.dataset if inputs and inputs.dataset is not None
                        else load_dataset(config.dataset, config.data_root, config.split,
                                          config.resize))
        self.plan = make_plan(config, len(self.dataset), self.dataset.num_classes)
        ckpt = method.load_network(config, self.dataset.image_shape, self.dataset.num_classes,
                                   inputs.checkpoints if inputs else None)
        expected = self.store.identity.get(method.sha256_field)
        if ckpt.sha256 != expected:
            raise ShardError(f"the model on {worker_name()} has sha256 "
                             f"{ckpt.sha256[:12]}, the store was made with "
                             f"{str(expected)[:12]}")
        recorded = self.store.identity.get("sources_sha256")
        if recorded and not config.dataset.startswith("store:") and recorded != \
                self.dataset.sources_sha256(self.plan.source_index):
            raise ShardError(f"the sources of {config.dataset} on {worker_name()} differ "
                             f"from those the store was made with (sources_sha256)")
        self.maker = CEMaker(CEParams.from_config(config), ckpt.model, ckpt.meta, device)
        self.targets = torch.as_tensor(self.plan.targets())
        self.replicates = torch.as_tensor(self.plan.replicates())

    def run_shard(self, shard: int) -> ShardResult:
        started_at, t0 = time.time(), time.perf_counter()
        index = self.plan.source_index[self.plan.shard_rows(shard)]
        x = self.dataset.images(index).float()  # (n, C, H, W) in [0, 1]
        batch = self.maker.make(x, index, self.targets, self.replicates)
        if bad := batch.not_finite():
            raise ShardError(f"shard {shard}: {bad} of {batch.l2.numel()} CEs are not finite")
        data = shard_arrays(batch, x, self.dataset.labels[index], index, self.targets,
                            self.config.ce_dtype)
        write_seconds = self.store.write_shard(shard, data, started_at=started_at)
        return ShardResult(shard, ces=batch.l2.numel(), seconds=time.perf_counter() - t0,
                           write_seconds=write_seconds, worker=worker_name())


def shard_arrays(batch: CEBatch, x: torch.Tensor, labels, index, targets: torch.Tensor,
                 ce_dtype: str) -> dict[str, np.ndarray]:
    """The arrays of a shard as the store holds them (store/layout.py): its n sources `x`,
    their `labels` and dataset `index`, and the CEs of `batch` (ce/x in `ce_dtype`)."""
    n, k = batch.l2.shape
    return {
        "source/x": x.numpy(),
        "source/y": np.asarray(labels, dtype=np.int64),
        "source/index": np.asarray(index, dtype=np.int64),
        "ce/x": batch.x.numpy().astype(np.dtype(ce_dtype)),
        "ce/target": targets.repeat(n).view(n, k).numpy(),
        "ce/l2": batch.l2.numpy(),
        "ce/l0": batch.l0.numpy(),
        **{name: v.numpy() for name, v in batch.extras.items()},
    }
