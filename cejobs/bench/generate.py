"""`python -m cejobs.bench generate`: the generation worker's shard work end to end without a
store (zarr is not needed, so it runs on a bare GPU image): start-up, source loading, CE making
(`jobs.ce_maker.CEMaker`, what the worker runs), distances, the shard's arrays
(`generate_worker.shard_arrays`) and a stand-in write, each timed (docs/performance.md).
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import torch

from cejobs.bench.common import device_name
from cejobs.method.params import NET_PRECISIONS, SamplerParams
from cejobs.models.unet import UNET_PRESETS, UNet


def _process_age() -> float | None:
    """Seconds since this process started (Linux /proc), or None elsewhere."""
    try:
        import os

        with open("/proc/self/stat") as f:
            ticks = int(f.read().rsplit(")", 1)[1].split()[19])  # field 22: start time
        with open("/proc/uptime") as f:
            uptime = float(f.read().split()[0])
        return uptime - ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


def bench_generate(args) -> dict:
    """Shards made as the generation worker makes them (its dataset, plan, checkpoint and
    CEMaker), without the store.

    The model is a random untrained checkpoint of the preset (sampling does the same arithmetic
    whatever the weights) and the sources a random .npz dataset of its image shape. Each
    shard's arrays are written with numpy (np.save, uncompressed) as a stand-in for the zarr
    write, which `bench store` measures on its own. Start-up (dataset and checkpoint load,
    model to device) and the compilation of the first shard are reported apart.
    """
    import numpy as np

    from cejobs.data import load_dataset
    from cejobs.devices import resolve_device
    from cejobs.jobs.ce_maker import CEMaker
    from cejobs.jobs.config import GenerateConfig
    from cejobs.jobs.generate_worker import shard_arrays
    from cejobs.jobs.methods import METHODS, CEParams
    from cejobs.jobs.plan import make_plan
    from cejobs.models.checkpoint import save_checkpoint
    from cejobs.settings import typed

    imports_s = _process_age()  # interpreter, torch and cejobs imports
    t_start = time.perf_counter()
    kwargs = dict(UNET_PRESETS[args.preset])
    c, h, w = kwargs["image_channels"], kwargs["image_size"], kwargs["image_size"]
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        n = args.sources
        np.savez(tmp / "sources.npz", x=rng.integers(0, 256, (n, c, h, w), dtype=np.uint8),
                 y=np.arange(n) % kwargs["num_classes"])
        torch.manual_seed(0)
        save_checkpoint(tmp / "model.pt", UNet(**kwargs), kind="diffusion", arch="unet",
                        arch_kwargs=kwargs, meta={"dataset": "random"})
        config = typed(GenerateConfig, dict(
            dataset=str(tmp / "sources.npz"), sources=n, shard_size=args.shard_size,
            steps=args.steps, per_class=args.per_class, precision=args.precision,
            batch_size=args.batch_size, fast=args.fast, compile=args.compile,
            compile_cache=args.compile_cache, device=args.device,
            model=str(tmp / "model.pt"), method=args.method, backend="local"))
        t0 = time.perf_counter()
        device = resolve_device(config.device)
        dataset = load_dataset(config.dataset, config.data_root, config.split)
        plan = make_plan(config, len(dataset), dataset.num_classes)
        method = METHODS[config.method]
        ckpt = method.load_network(config, dataset.image_shape, dataset.num_classes)
        maker = CEMaker(CEParams.from_config(config), ckpt.model, ckpt.meta, device)
        targets = torch.as_tensor(plan.targets())
        replicates = torch.as_tensor(plan.replicates())
        startup_s = time.perf_counter() - t0
        shards = []
        for s in range(plan.num_shards):
            t0 = time.perf_counter()
            index = plan.source_index[plan.shard_rows(s)]
            x = dataset.images(index).float()
            t1 = time.perf_counter()
            batch = maker.make(x, index, targets, replicates)
            if bad := batch.not_finite():
                raise SystemExit(f"shard {s}: {bad} CEs are not finite")
            data = shard_arrays(batch, x, dataset.labels[index], index, targets,
                                config.ce_dtype)
            t2 = time.perf_counter()
            np.savez(tmp / f"shard{s}.npz", **data)  # stand-in for CEStore.write_shard
            write_s = time.perf_counter() - t2
            shards.append(dict(ces=batch.l2.numel(), seconds=time.perf_counter() - t0,
                               write_seconds=write_s, load_seconds=t1 - t0,
                               sample_seconds=batch.sample_seconds,
                               other_seconds=t2 - t1 - batch.sample_seconds))
        steady = shards[1:] or shards
        ces = sum(r["ces"] for r in steady)
        total = sum(r["seconds"] for r in steady)
        sample = sum(r["sample_seconds"] for r in steady)
        return dict(
            bench="generate", device=device_name(device), preset=args.preset,
            precision=args.precision, fast=args.fast, mode=maker.engine.mode,
            compile_seconds=maker.engine.compile_seconds,
            steps=args.steps, shards=len(shards), ces_per_shard=shards[0]["ces"],
            imports_seconds=imports_s, startup_seconds=startup_s,
            process_seconds=time.perf_counter() - t_start,
            first_shard_seconds=shards[0]["seconds"],
            steady_shards=len(steady),
            ces_per_s=ces / total, sampling_only_ces_per_s=ces / sample,
            ces_per_s_at_1000_steps=ces / total * args.steps / 1000,
            end_to_end_share=sample / total,
            load_seconds_mean=statistics.mean(r["load_seconds"] for r in steady),
            sample_seconds_mean=statistics.mean(r["sample_seconds"] for r in steady),
            other_seconds_mean=statistics.mean(r["other_seconds"] for r in steady),
            write_seconds_mean=statistics.mean(r["write_seconds"] for r in steady),
            write_stand_in="np.savez, uncompressed (no zarr here)",
            torch=torch.__version__,
        )


def add_parser(sub) -> None:
    p = sub.add_parser("generate", help="generation worker end to end, no store needed",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="paper", choices=sorted(UNET_PRESETS))
    p.add_argument("--sources", type=int, default=200)
    p.add_argument("--shard-size", type=int, default=50)
    p.add_argument("--per-class", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=1000)
    p.add_argument("--precision", default="bf16", choices=sorted(NET_PRECISIONS))
    p.add_argument("--method", default=SamplerParams.method)
    p.add_argument("--fast", action=argparse.BooleanOptionalAction, default=True)
    p.add_argument("--compile", action="store_true",
                   help="torch.compile: the whole step with --fast, else the network")
    p.add_argument("--compile-cache", default=None)
    p.add_argument("--device", default="auto")
    p.add_argument("--dir", default=None, help="folder for the temporary files")
    p.set_defaults(run=bench_generate)
