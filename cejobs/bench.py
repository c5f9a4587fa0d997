"""`python -m cejobs.bench`: speed and memory, measured (results go to docs/performance.md).

Subcommands:
  sampler   CEs/s of the augmented-score sampler for a U-Net preset, with FLOPs and MFU against
            a bf16/fp32 matmul peak measured on the same device in the same run (nanoGPT's
            estimate_mfu habit). Needs only torch: it runs on a bare GPU image.
            --fast: the fast path (cejobs/method/fastpath.py); --check: its equivalence check.
  scaling   CE throughput of the Ray backend with 1 and 2 CPU workers on a real local Ray.
  store     Fraction of shard time spent writing zarr, read from a finished store, or of a
            synthetic CIFAR10 shard on local disk and S3 (--moto, --s3; cejobs/bench_s3.py).
  scale     Status and resume-planning time of a store of 10,000 done shards (local or S3).
  memory    Peak RSS of the generate driver as the number of sources grows.
  train     Seconds per training iteration of a U-Net preset (forward, backward, Adam).
  generate  The generation worker's shards end to end (start-up, loading, sampling, writes),
            without a store: runs where zarr is not installed.
  fusion    Which kernels torch.compile emits for GroupNorm + SiLU + conv (bf16).
  steps     CE quality at 1000, 500, 250, 100 steps on digits (same Brownian path per CE).
  load      A tiny generation per backend, idle and beside CPU burners (cejobs/bench_load.py).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cejobs import bench_fast, bench_generate, bench_load, bench_s3, bench_steps
from cejobs.models.compiled import maybe_compile
from cejobs.models.unet import UNET_PRESETS, UNet
from cejobs.method.noise import CENoise
from cejobs.method.sampler import guided_eps, sample_ce
from cejobs.threads import set_threads

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _time(fn, device, repeat: int) -> float:
    """Median seconds of `fn()` over `repeat` runs, after one warm-up."""
    fn()
    _sync(device)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def matmul_peak(device: torch.device, dtype: torch.dtype, n: int) -> float:
    """Measured FLOP/s of an n x n x n matmul: the peak MFU is reported against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    seconds = _time(lambda: a @ b, device, repeat=5)
    return 2 * n**3 / seconds


def forward_flops(net, x, t, y) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        net(x, t, y)
    return counter.get_total_flops()


def bench_sampler(args) -> dict:
    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS[args.preset]).to(device).eval()
    net, mode = maybe_compile(net, args.compile)
    dtype = DTYPES[args.precision]
    shape = (args.batch, *preset_image_shape(args.preset))
    b = args.batch
    mu = torch.rand(shape, device=device) * 2 - 1
    target = torch.arange(b, device=device) % 10
    noise = CENoise(0, torch.arange(b), target.cpu(), torch.zeros(b, dtype=torch.long))
    latents = noise.latents(mu)
    t = torch.full((b,), 0.5, device=device)

    def run_sampler():
        with torch.no_grad():
            sample_ce(net, latents, mu, target, steps=args.steps, randn_like=noise,
                      net_dtype=dtype, method=args.method)

    def run_forward():
        with torch.no_grad():
            guided_eps(net, latents, t, target, 15.0, 10, dtype)

    def run_noise():
        fresh = CENoise(0, torch.arange(b), target.cpu(), torch.zeros(b, dtype=torch.long))
        for i in range(args.steps):
            fresh(i, latents)

    sampler_s = _time(run_sampler, device, args.repeat) / args.steps
    forward_s = _time(run_forward, device, args.repeat)
    noise_s = _time(run_noise, device, args.repeat) / args.steps
    flops = forward_flops(UNet(**UNET_PRESETS[args.preset]).to(device).eval(),
                          torch.cat([latents, latents]), torch.cat([t, t]),
                          torch.cat([target, target]))
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024)
    result = dict(
        bench="sampler", device=device_name(device), preset=args.preset,
        params=sum(p.numel() for p in net.parameters()), precision=args.precision,
        mode=mode, batch_ces=b, method=args.method,
        step_ms=1e3 * sampler_s, guided_forward_ms=1e3 * forward_s, noise_ms=1e3 * noise_s,
        overhead_vs_forward=sampler_s / forward_s - 1.0,
        ces_per_s_at_1000_steps=b / (sampler_s * 1000),
        gflop_per_image_forward=flops / (2 * b) / 1e9,
        achieved_tflops=flops / forward_s / 1e12, matmul_peak_tflops=peak / 1e12,
        mfu=flops / forward_s / peak,
        torch=torch.__version__,
    )
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def preset_image_shape(preset: str) -> tuple[int, int, int]:
    p = UNET_PRESETS[preset]
    return (p["image_channels"], p["image_size"], p["image_size"])


def bench_train(args) -> dict:
    """One training iteration = VP denoising loss, backward, grad-clip, Adam step."""
    from cejobs.method.sde import VPSDE

    device = torch.device(args.device if args.device != "auto" else
                          ("cuda" if torch.cuda.is_available() else "cpu"))
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS[args.preset]).to(device).train()
    opt = torch.optim.Adam(net.parameters(), lr=2e-4)
    sde = VPSDE()
    b = args.batch
    x0 = torch.rand(b, *preset_image_shape(args.preset), device=device) * 2 - 1
    y = torch.arange(b, device=device) % 11
    dtype = DTYPES[args.precision]

    def step():
        t = torch.rand(b, device=device) * (1 - 1e-5) + 1e-5
        z = torch.randn_like(x0)
        a, s = sde.alpha(t)[:, None, None, None], sde.sigma(t)[:, None, None, None]
        with torch.autocast(device.type, dtype=dtype, enabled=dtype != torch.float32):
            loss = ((net(a * x0 + s * z, t, y).float() - z) ** 2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(net.parameters(), 1.0)
        opt.step()

    seconds = _time(step, device, args.repeat)
    return dict(bench="train", device=device_name(device), preset=args.preset, batch=b,
                precision=args.precision, seconds_per_iteration=seconds,
                images_per_s=b / seconds, torch=torch.__version__)


def _generate(args_list: list[str], env=None) -> tuple[float, str]:
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
    from cejobs.status import store_status
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
            wall, _ = _generate([
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


def bench_store(args) -> dict:
    """Zarr write time of shards: read from a finished store, or timed on a synthetic
    CIFAR10-shaped shard (50 sources x 20 CEs x 3x32x32, random values: the worst case for
    compression) against the measured GPU shard time, on local disk and on S3 (bench_s3)."""
    import numpy as np

    from cejobs.store.store import CEStore

    if args.store:
        store = CEStore.open(args.store)
        done = store.done()
        start = store.read_per_shard("shard/started_at")[done]
        end = store.read_per_shard("shard/finished_at")[done]
        write = store.read_per_shard("shard/write_seconds")[done]
        frac = write / (end - start)
        return dict(bench="store", store=str(args.store), shards=int(done.sum()),
                    write_fraction_mean=float(np.mean(frac)),
                    write_fraction_max=float(np.max(frac)),
                    write_seconds_mean=float(np.mean(write)))
    out = bench_s3.bench_store_targets(args)  # local disk, and S3 with --moto or --s3
    data, _ = bench_s3.synthetic_shard()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out["checksums_ms"] = _checksum_costs(data["ce/x"], Path(tmp))
    return out


def _checksum_costs(x, folder: Path, repeat: int = 20) -> dict:
    """Best-of-`repeat` write and read ms of one ce/x chunk `x` per way of checksumming it
    (docs/reliability.md): none (zstd, cejobs-store-v1), zstd's frame checksum, zarr's crc32c
    codec after zstd (what the store uses), and a sha256 of the raw shard on top of none."""
    import hashlib

    import numpy as np
    import zarr
    from zarr.codecs import Crc32cCodec, ZstdCodec

    ways = {"none": [ZstdCodec(level=0)], "zstd_checksum": [ZstdCodec(level=0, checksum=True)],
            "crc32c": [ZstdCodec(level=0), Crc32cCodec()]}
    out = {}
    for name, compressors in ways.items():
        arr = zarr.create_array(str(folder / f"{name}.zarr"), shape=x.shape, chunks=x.shape,
                                dtype=x.dtype, compressors=compressors)
        write = read = float("inf")
        for _ in range(repeat):
            t0 = time.perf_counter()
            arr[:] = x
            t1 = time.perf_counter()
            np.asarray(arr[:])
            write, read = min(write, t1 - t0), min(read, time.perf_counter() - t1)
        out[name] = dict(write=round(write * 1e3, 1), read=round(read * 1e3, 1))
    t0, raw = time.perf_counter(), x.tobytes()
    for _ in range(repeat):
        hashlib.sha256(raw).digest()
    out["sha256_per_shard"] = round((time.perf_counter() - t0) / repeat * 1e3, 1)
    return out


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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m cejobs.bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="bench", required=True)
    p = sub.add_parser("sampler", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="digits", choices=sorted(UNET_PRESETS))
    p.add_argument("--batch", type=int, default=40, help="CEs per batch (network sees 2x)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps timed per run")
    p.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--method", default="boltzmann")
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true", help="torch.compile the U-Net")
    p.add_argument("--repeat", type=int, default=3)
    bench_fast.add_sampler_flags(p)
    p = sub.add_parser("scaling", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--sources", type=int, default=8)
    p.add_argument("--shard-size", type=int, default=1)
    p.add_argument("--steps", type=int, default=200)
    p = sub.add_parser("train", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="paper", choices=sorted(UNET_PRESETS))
    p.add_argument("--batch", type=int, default=128)
    p.add_argument("--precision", default="fp32", choices=sorted(DTYPES))
    p.add_argument("--device", default="auto")
    p.add_argument("--repeat", type=int, default=3)
    p = sub.add_parser("store", formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=None, help="a finished store; unset: a synthetic shard")
    p.add_argument("--dir", default=None, help="folder for the synthetic store")
    p.add_argument("--shard-seconds", type=float, default=90.0,
                   help="shard compute time to compare with (H200, compiled bf16)")
    bench_s3.add_parsers(sub, p)
    bench_steps.add_parser(sub)
    bench_generate.add_parser(sub)
    bench_fast.add_fusion_parser(sub)
    p = sub.add_parser("memory")
    p.add_argument("--sources", type=int, nargs="+", default=[16, 128, 1024])
    p.add_argument("--json", default=None)
    bench_load.add_parser(sub)
    args = parser.parse_args(argv)
    if args.bench in ("sampler", "train") and args.device in ("auto", "cpu"):
        set_threads(getattr(args, "threads", 0))
    if args.bench == "sampler" and (args.check or args.fast):
        run = bench_fast.check_sampler if args.check else bench_fast.bench_fast_sampler
        result = run(args)
        print(json.dumps(result, indent=2))
        return bench_fast.main_check(result) if args.check else 0
    result = {"fusion": bench_fast.bench_fusion, "generate": bench_generate.bench_generate,
              "sampler": bench_sampler, "scaling": bench_scaling, "store": bench_store,
              "memory": bench_memory, "scale": bench_s3.bench_scale, "train": bench_train, "steps": bench_steps.bench_steps,
              "load": bench_load.bench_load}[args.bench](args)
    print(json.dumps(result, indent=2))
    if getattr(args, "markdown", False):
        print(bench_steps.markdown_table(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
