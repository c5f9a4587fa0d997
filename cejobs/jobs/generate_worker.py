"""The generation worker: loads dataset and model once, then makes and stores shards of CEs.

A shard computes its CEs, writes its rows of every array, then its done flag
(docs/design.md §6-7). The same class runs in-process, in a Ray actor and in a SLURM task.
What differs between methods (checkpoint, extra arrays, how a network is prepared and how
CEs are made) comes from `cejobs.jobs.methods.METHODS`.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cejobs.data import load_dataset
from cejobs.devices import resolve_device
from cejobs.method.distances import l0_distance, l2_distance
from cejobs.jobs.methods import METHODS
from cejobs.jobs.config import GenerateConfig
from cejobs.jobs.plan import make_plan
from cejobs.hosts import worker_name
from cejobs.jobs.results import ShardError, ShardResult
from cejobs.jobs.tasks import ShardTask
from cejobs.jobs.worker_inputs import WorkerInputs, load_checkpoint_from


class GenerateWorker:
    """Loads the dataset and the model once; `run_shard(s)` makes and stores shard s's CEs."""

    def __init__(self, task: ShardTask, device: str | None = None, *, store: bool = True,
                 inputs: WorkerInputs | None = None):
        """store=False: no store is opened or written and the checksum is not checked; only
        `compute_shard` works (benchmarks on machines without zarr: bench generate).
        inputs: the checkpoint and dataset read by the driver (Ray); else read here."""
        self.config: GenerateConfig = task.config
        config = self.config
        self.method = METHODS[config.method]
        self.device = resolve_device(device or config.device)
        self.store = None
        if store:
            from cejobs.store.store import CEStore  # zarr: only where the store is written

            self.store = CEStore.open(task.store)
        self.dataset = (inputs.dataset if inputs and inputs.dataset is not None
                        else load_dataset(config.dataset, config.data_root, config.split))
        self.plan = make_plan(config, len(self.dataset), self.dataset.num_classes)
        ckpt = load_checkpoint_from(inputs, self.method.checkpoint_path(config),
                                    expect_kind=self.method.checkpoint)
        if self.store is not None:
            expected = self.store.identity.get(self.method.sha256_field)
            if ckpt.sha256 != expected:
                raise ShardError(f"checkpoint on {worker_name()} has sha256 "
                                 f"{ckpt.sha256[:12]}, the store was made with "
                                 f"{str(expected)[:12]}")
            recorded = self.store.identity.get("sources_sha256")
            if recorded and not config.dataset.startswith("store:") and recorded != \
                    self.dataset.sources_sha256(self.plan.source_index):
                raise ShardError(f"the sources of {config.dataset} on {worker_name()} differ "
                                 f"from those the store was made with (sources_sha256)")
        self.meta = ckpt.meta
        net = ckpt.model.to(self.device).eval()
        # what makes the CEs: the network, compiled, or the fast sampling path (--fast)
        self.engine, self.net_mode = self.method.load(net, config, self.device)
        self.targets = torch.as_tensor(self.plan.targets())
        self.replicates = torch.as_tensor(self.plan.replicates())

    @property
    def fast(self):
        """The fast sampling path (cejobs.method.fastpath.FastSampler) when it is in use."""
        return self.engine if self.net_mode == "fast" else None

    def run_shard(self, shard: int) -> ShardResult:
        started_at, t0 = time.time(), time.perf_counter()
        data, ces = self.compute_shard(shard)
        write_seconds = self.store.write_shard(shard, data, started_at=started_at)
        return ShardResult(shard, ces=ces, seconds=time.perf_counter() - t0,
                           write_seconds=write_seconds, worker=worker_name())

    def compute_shard(self, shard: int, timings: dict | None = None) -> tuple[dict, int]:
        """(arrays of shard s as the store holds them, number of CEs); `timings` gets the
        seconds of source loading, CE making and the rest (distances, conversion)."""
        t0 = time.perf_counter()
        rows = self.plan.shard_rows(shard)
        index = self.plan.source_index[rows]
        x = self.dataset.images(index).float()  # (n, C, H, W) in [0, 1]
        y = torch.as_tensor(self.dataset.labels[index], dtype=torch.int64)
        n, k = len(index), self.plan.ces_per_source
        # CE (i, j) of the shard: source i, target targets[j], replicate replicates[j]
        src = torch.as_tensor(index).repeat_interleave(k)
        target = self.targets.repeat(n)
        replicate = self.replicates.repeat(n)
        mu = x.repeat_interleave(k, dim=0)
        t1 = time.perf_counter()

        x_ce, extras = self.method.make(self.engine, self.meta, self.config, mu, src, target,
                                        replicate, self.device)
        t2 = time.perf_counter()
        bad = int((~torch.isfinite(x_ce)).flatten(1).any(1).sum())
        if bad:
            raise ShardError(f"shard {shard}: {bad} of {len(x_ce)} CEs are not finite")
        l2 = l2_distance(mu, x_ce)
        l0 = l0_distance(mu, x_ce)

        ce_dtype = np.dtype(self.config.ce_dtype)
        data = {
            "source/x": x.numpy(),
            "source/y": y.numpy(),
            "source/index": np.asarray(index, dtype=np.int64),
            "ce/x": x_ce.view(n, k, *x.shape[1:]).numpy().astype(ce_dtype),
            "ce/target": target.view(n, k).numpy(),
            "ce/l2": l2.view(n, k).numpy(),
            "ce/l0": l0.view(n, k).numpy(),
            **{name: v.view(n, k).numpy() for name, v in extras.items()},
        }
        if timings is not None:
            timings.update(load_seconds=t1 - t0, sample_seconds=t2 - t1,
                           other_seconds=time.perf_counter() - t2)
        return data, n * k
