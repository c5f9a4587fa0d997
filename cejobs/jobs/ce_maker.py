"""The CEs of a batch of sources, computed only: no dataset, checkpoint or store is read or
written here. The generation worker adds those reads and writes (generate_worker.py); the
benchmarks use it as it is (cejobs/bench/).

Every source gets the same k CEs: CE j is guided to `targets[j]` and is replicate
`replicates[j]` of that target (jobs/plan.py). Its noise depends only on the run's seed and
(source index, target, replicate), so a CE does not depend on the batch it is made in.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from cejobs.jobs.engines import Engine
from cejobs.jobs.methods import METHODS, CEParams
from cejobs.method.distances import l0_distance, l2_distance


@dataclass(frozen=True)
class CEBatch:
    """The CEs of n sources, k each, on the CPU."""

    x: Tensor  # (n, k, C, H, W) CEs, images in [0, 1]
    l2: Tensor  # (n, k) L2 distance of each CE to its source
    l0: Tensor  # (n, k) L0 distance (share of elements changed) of each CE to its source
    extras: dict[str, Tensor]  # the method's store arrays (methods.py), (n, k) each
    sample_seconds: float  # time spent making the CEs
    distance_seconds: float  # time spent on the distances

    def not_finite(self) -> int:
        """How many CEs hold a NaN or an infinity."""
        return int((~torch.isfinite(self.x)).flatten(2).any(2).sum())


class CEMaker:
    """`make(sources, index, targets, replicates)`: the CEs of a batch of sources, made with
    the engine of `params.method` (methods.py), in batches of `params.batch_size` CEs."""

    def __init__(self, params: CEParams, net: nn.Module, meta: dict,
                 device: torch.device | str):
        """net: the method's network (diffusion model or classifier) from its checkpoint;
        meta: the checkpoint's metadata (`centered`: the model space of a diffusion model)."""
        self.params = params
        self.device = torch.device(device)
        net = net.to(self.device).eval()
        self.engine: Engine = METHODS[params.method].load(net, meta, params, self.device)

    def make(self, sources: Tensor, index: Tensor, targets: Tensor,
             replicates: Tensor) -> CEBatch:
        """sources: (n, C, H, W) images in [0, 1]; index: (n,) their indices in the dataset;
        targets, replicates: (k,) the target and replicate of each source's CE j."""
        t0 = time.perf_counter()
        n, k = len(index), len(targets)
        sources = sources.float()
        src = torch.as_tensor(index, dtype=torch.int64).repeat_interleave(k)
        target = torch.as_tensor(targets).repeat(n)
        replicate = torch.as_tensor(replicates).repeat(n)
        mu = sources.repeat_interleave(k, dim=0)
        xs, extras = [], {}
        for b in range(0, n * k, self.params.batch_size):
            batch = slice(b, b + self.params.batch_size)
            x, more = self.engine.make(mu[batch], src[batch], target[batch], replicate[batch])
            xs.append(x)
            for name, values in more.items():
                extras.setdefault(name, []).append(values)
        x_ce = torch.cat(xs)
        t1 = time.perf_counter()
        l2, l0 = l2_distance(mu, x_ce), l0_distance(mu, x_ce)
        return CEBatch(x=x_ce.view(n, k, *sources.shape[1:]), l2=l2.view(n, k),
                       l0=l0.view(n, k),
                       extras={name: torch.cat(v).view(n, k) for name, v in extras.items()},
                       sample_seconds=t1 - t0, distance_seconds=time.perf_counter() - t1)
