"""Whole `python -m cejobs.generate` runs, timed from outside (docs/performance.md):

- `bench scaling`: CE throughput of the Ray backend with 1 and 2 CPU workers on a real local Ray;
- `bench memory`: peak RSS of the generate driver as the number of sources grows.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cejobs.models.unet import UNET_PRESETS, UNet


def generate_run(args_list: list[str], env=None) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", *args_list],
                       capture_output=True, text=True, env=env)
    if r.returncode != 0:
        raise SystemExit(f"generate failed: {r.stderr.strip().splitlines()[-1]}")
    return time.perf_counter() - t0, r.stdout


def bench_scaling(args) -> dict:
    """Same run with 1 and 2 single-thread Ray CPU workers on a private local Ray.

    Throughput is CEs over the busy time read from the store (the union of the shards'
    start-finish intervals), so Ray and actor start-up are left out. The model is the shipped
    digits diffusion model, or, when it is absent, the same architecture with its default
    initialisation: the sampler does the same arithmetic whatever the weights. The load
    average before and after is reported: other processes on the machine skew the figure.
    """
    from cejobs.jobs.config import REPO_DATA
    from cejobs.models.checkpoint import save_checkpoint
    from cejobs.drivers.status import store_status
    from cejobs.store.store import CEStore

    out = {}
    load_before = os.getloadavg()
    env = {**os.environ, "RAY_ADDRESS": "local"}  # never join a cluster running here
    with tempfile.TemporaryDirectory() as tmp:
        model = REPO_DATA / "digits" / "diffusion.pt"
        if not model.exists():
            model = Path(tmp) / "digits-untrained.pt"
            torch.manual_seed(0)
            kwargs = dict(UNET_PRESETS["digits"])
            save_checkpoint(model, UNet(**kwargs), kind="diffusion", arch="unet",
                            arch_kwargs=kwargs, meta={"dataset": "digits"})
        for workers in args.workers:
            store = Path(tmp) / f"w{workers}.zarr"
            wall, _ = generate_run([
                "--backend", "ray", "--workers", str(workers), "--threads", "1",
                "--model", str(model), "--sources", str(args.sources),
                "--shard-size", str(args.shard_size), "--steps", str(args.steps),
                "--store", str(store), "--no-progress",
            ], env=env)
            st = store_status(CEStore.open(store))
            out[workers] = dict(ces=st.ces_done, ces_per_s=st.rate, busy_s=st.busy_seconds,
                                wall_s=wall)
    base = out[args.workers[0]]["ces_per_s"]
    return dict(bench="scaling", device=f"{platform.processor() or platform.machine()} CPU, "
                f"{os.cpu_count()} cores", model=model.name, steps=args.steps,
                sources=args.sources, shard_size=args.shard_size,
                load_average_before=load_before, load_average_after=os.getloadavg(),
                results={str(k): {**v, "speedup": v["ces_per_s"] / base} for k, v in out.items()})


def bench_memory(args) -> dict:
    """Peak RSS of the whole generate process (local backend) for growing N, 1 step per CE."""
    out = {}
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sources:
            store = Path(tmp) / f"n{n}.zarr"
            code = ("import resource, runpy, sys; sys.argv=['generate'] + sys.argv[1:];\n"
                    "try:\n    runpy.run_module('cejobs.generate', run_name='__main__')\n"
                    "except SystemExit: pass\n"
                    "print('MAXRSS', resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)")
            r = subprocess.run([sys.executable, "-c", code, "--backend", "local", "--sources",
                                str(n), "--steps", "1", "--shard-size", "8", "--store",
                                str(store), "--no-progress"], capture_output=True, text=True)
            rss = [line for line in r.stdout.splitlines() if line.startswith("MAXRSS")]
            if not rss:
                raise SystemExit(f"generate failed: {r.stderr.strip()[-300:]}")
            out[n] = int(rss[0].split()[1]) / 1024  # KiB -> MiB
    return dict(bench="memory", peak_rss_mib=out)


def add_parsers(sub) -> None:
    p = sub.add_parser("scaling", help="Ray CE throughput with 1 and 2 CPU workers",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=200)
    p.set_defaults(run=bench_scaling)
    p = sub.add_parser("memory", help="peak RSS of the generate driver as sources grow")
    p.add_argument("--sources", type=int, nargs="+", default=[16, 128, 1024])
    p.add_argument("--json", default=None)
    p.set_defaults(run=bench_memory)
