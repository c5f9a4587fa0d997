"""The generation worker: loads dataset and model once, then makes and stores shards of CEs.

A shard computes its CEs, writes its rows of every array, then its done flag
(docs/design.md §6-7). The same class runs in-process, in a Ray actor and in a SLURM task.
"""

from __future__ import annotations

import time

import numpy as np
import torch

from cejobs.config import GenerateConfig
from cejobs.data import load_dataset
from cejobs.distances import l0_distance, l2_distance
from cejobs.fastpath import FastOptions, FastSampler, use_inductor_cache
from cejobs.models.checkpoint import load_checkpoint
from cejobs.models.compiled import maybe_compile
from cejobs.noise import CENoise
from cejobs.plan import make_plan
from cejobs.robust import robust_ce
from cejobs.sampler import sample_ce, to_image_space, to_model_space
from cejobs.tasks import ShardError, ShardResult, ShardTask, resolve_device, worker_name

NET_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


class GenerateWorker:
    """Loads the dataset and the model once; `run_shard(s)` makes and stores shard s's CEs."""

    def __init__(self, task: ShardTask, device: str | None = None, *, store: bool = True):
        """store=False: no store is opened or written and the checksum is not checked; only
        `compute_shard` works (benchmarks on machines without zarr: bench generate)."""
        self.config = config = GenerateConfig(**task.config)
        self.device = resolve_device(device or config.device)
        if store:
            from cejobs.store import CEStore  # zarr: only where the store is written

            self.store = CEStore.open(task.store)
        else:
            self.store = None
        self.dataset = load_dataset(config.dataset, config.data_root, config.split)
        self.plan = make_plan(config, len(self.dataset), self.dataset.num_classes)
        identity = self.store.identity if self.store is not None else {}
        if config.method == "robust":
            ckpt = load_checkpoint(config.resolved_classifier(), expect_kind="classifier")
            expected = identity.get("classifier_sha256")
        else:
            ckpt = load_checkpoint(config.resolved_model(), expect_kind="diffusion")
            expected = identity.get("model_sha256")
            self.centered = bool(ckpt.meta.get("centered", True))
        if self.store is not None and ckpt.sha256 != expected:
            raise ShardError(f"checkpoint on {worker_name()} has sha256 {ckpt.sha256[:12]}, "
                             f"the store was made with {str(expected)[:12]}")
        self.net = ckpt.model.to(self.device).eval()
        self.fast: FastSampler | None = None
        if config.method != "robust":
            if config.compile or config.fast:
                use_inductor_cache(config.compile_cache)
            if config.fast:  # with --compile: the whole step, compiled on the first batch
                self.fast = FastSampler(
                    self.net, self.device, seed=config.seed, method=config.method, w=config.w,
                    sigma_ce=config.sigma_ce, steps=config.steps,
                    net_dtype=NET_DTYPES[config.precision],
                    options=FastOptions(compile=config.compile))
                self.net_mode = "fast"
            else:
                self.net, self.net_mode = maybe_compile(self.net, config.compile)
        self.targets = torch.as_tensor(self.plan.targets())
        self.replicates = torch.as_tensor(self.plan.replicates())

    # ------------------------------------------------------------------ shard
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

        extras: dict[str, np.ndarray] = {}
        if self.config.method == "robust":
            x_ce, steps, reached = self._robust(mu, target)
            extras["ce/robust_steps"] = steps.view(n, k).numpy()
            extras["ce/robust_reached"] = reached.view(n, k).numpy()
        else:
            x_ce = self._diffusion(mu, src, target, replicate)
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
            **extras,
        }
        if timings is not None:
            timings.update(load_seconds=t1 - t0, sample_seconds=t2 - t1,
                           other_seconds=time.perf_counter() - t2)
        return data, n * k

    def _batches(self, total: int):
        size = self.config.batch_size
        return [slice(i, min(i + size, total)) for i in range(0, total, size)]

    def _diffusion(self, mu, src, target, replicate) -> torch.Tensor:
        c = self.config
        out = []
        for b in self._batches(len(mu)):
            if self.fast is not None:  # the same CEs, same noise (fastpath.py)
                mu_b = to_model_space(mu[b], self.centered).to(self.device)
                m = self.fast.sample(mu_b, target[b], src[b], replicate[b])
                out.append(to_image_space(m, self.centered).cpu())
                continue
            noise = CENoise(c.seed, src[b], target[b], replicate[b])
            mu_b = to_model_space(mu[b], self.centered).to(self.device)
            latents = noise.latents(mu_b)
            m = sample_ce(
                self.net, latents, mu_b, target[b].to(self.device), method=c.method, w=c.w,
                sigma_ce=c.sigma_ce, steps=c.steps, randn_like=noise,
                net_dtype=NET_DTYPES[c.precision],
            )
            out.append(to_image_space(m, self.centered).cpu())
        return torch.cat(out)

    def _robust(self, x, target):
        c = self.config
        xs, steps, reached = [], [], []
        for b in self._batches(len(x)):
            r = robust_ce(self.net, x[b].to(self.device), target[b].to(self.device),
                          step_size=c.robust_step_size, max_steps=c.robust_max_steps,
                          threshold=c.robust_threshold)
            xs.append(r.x.cpu())
            steps.append(r.steps.cpu())
            reached.append(r.reached.cpu())
        return torch.cat(xs), torch.cat(steps), torch.cat(reached)
