"""`python -m cejobs.bench sampler`: the augmented-score sampler's speed, and its fast path's
(docs/performance.md). Needs only torch (and numpy): it runs on a bare GPU image.

- `bench sampler`: CEs/s of `sampler.sample_ce` for a U-Net preset, with FLOPs and MFU against
  a bf16/fp32 matmul peak measured on the same device in the same run.
- `bench sampler --fast`: CE/s of `fastpath.FastSampler`, with compile time, MFU of the whole
  step, and (`--baseline`) the fp32 eager sampler's CE/s in the same run.
- `bench sampler --check`: the fast path's CEs against the fp32 eager reference made with the
  same per-CE noise; the median over CEs of ||fast - ref|| / ||ref - source|| (image space)
  must be at most `--tolerance` (0.05), else exit status 1.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import statistics
import sys
import time
from pathlib import Path

import torch

from cejobs.bench.common import (bench_device, device_name, forward_flops, matmul_peak,
                                 median_seconds, sync)
from cejobs.devices import use_inductor_cache
from cejobs.method.fastpath import FastOptions, FastSampler
from cejobs.method.noise import CENoise
from cejobs.method.params import DEFAULT_PRECISION, NET_PRECISIONS, SamplerParams, net_dtype_of
from cejobs.method.sampler import guided_eps, sample_ce, to_image_space, to_model_space
from cejobs.models.compiled import maybe_compile
from cejobs.models.unet import UNET_PRESETS, UNet


def sampler_params(args, precision: str | None = None) -> SamplerParams:
    """The sampler parameters of the flags (--method, --w, --sigma-ce, --steps, --precision)."""
    return SamplerParams(method=args.method, w=args.w, sigma_ce=args.sigma_ce, steps=args.steps,
                         net_dtype=net_dtype_of(precision or args.precision))


def fast_options(args) -> FastOptions:
    return FastOptions(compile=args.compile, cuda_graphs=not args.no_cuda_graphs,
                       channels_last=not args.no_channels_last, sdpa=not args.no_sdpa,
                       triton_norm=args.triton_norm, compile_backend=args.compile_backend)


def run(args) -> dict:
    """The benchmark the flags ask for: --check, --fast, or the eager sampler."""
    if args.check:
        return check_sampler(args)
    return bench_fast_sampler(args) if args.fast else bench_sampler(args)


def bench_net(args, device: torch.device) -> tuple[torch.nn.Module, str]:
    """The timed network: `--model` (with `--uncond-model`; any kind of models/spec.py), else
    the preset with random weights (seed 0)."""
    if args.model:
        from cejobs.models.spec import load_model

        loaded = load_model(args.model, getattr(args, "uncond_model", None))
        return loaded.model.to(device).eval(), f"{loaded.kind} {args.model}"
    torch.manual_seed(0)
    return UNet(**UNET_PRESETS[args.preset]).to(device).eval(), f"preset {args.preset}"


def bench_sampler(args) -> dict:
    """CE/s of the eager (or --compile'd network) sampler on a preset with random weights, or
    on `--model`."""
    device = bench_device(args.device)
    net, net_name = bench_net(args, device)
    flops_net = copy.deepcopy(net)
    net, mode = maybe_compile(net, args.compile)
    params = sampler_params(args)
    b = args.batch
    mu = torch.rand((b, *flops_net.image_shape), device=device) * 2 - 1
    classes = flops_net.num_classes
    target = torch.arange(b, device=device) % classes
    noise = CENoise(0, torch.arange(b), target.cpu(), torch.zeros(b, dtype=torch.long))
    latents = noise.latents(mu)
    t = torch.full((b,), 0.5, device=device)

    def run_sampler():
        with torch.no_grad():
            sample_ce(net, latents, mu, target, params, randn_like=noise)

    def run_forward():
        with torch.no_grad():
            guided_eps(net, latents, t, target, params.w, classes, params.net_dtype)

    def run_noise():
        fresh = CENoise(0, torch.arange(b), target.cpu(), torch.zeros(b, dtype=torch.long))
        for i in range(args.steps):
            fresh(i, latents)

    sampler_s = median_seconds(run_sampler, device, args.repeat) / args.steps
    forward_s = median_seconds(run_forward, device, args.repeat)
    noise_s = median_seconds(run_noise, device, args.repeat) / args.steps
    flops = forward_flops(flops_net, torch.cat([latents, latents]), torch.cat([t, t]),
                          torch.cat([target, target]))
    peak = matmul_peak(device, params.net_dtype, 8192 if device.type == "cuda" else 1024)
    result = dict(
        bench="sampler", device=device_name(device), preset=args.preset, net=net_name,
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


def check_net(args, device: torch.device) -> tuple[UNet, str]:
    """The network of the check: `--model`, else the shipped digits model for the digits
    preset, else the preset with random weights. Random weights use zero_init=False: DDPM's
    zero-initialised output layers would make eps = 0 and the check trivial. A random network
    is no score, and its guided sampler is chaotic (docs/performance.md): its value measures
    that, not the fast path; check with a trained checkpoint."""
    from cejobs.jobs.config import REPO_DATA
    from cejobs.models.spec import load_model

    path = Path(args.model) if args.model else REPO_DATA / "digits" / "diffusion.pt"
    if args.model or (args.preset == "digits" and path.exists()):
        loaded = load_model(args.model or str(path), getattr(args, "uncond_model", None))
        return loaded.model.to(device).eval(), f"{path.name} ({loaded.sha256[:12]})"
    torch.manual_seed(0)
    net = UNet(**{**UNET_PRESETS[args.preset], "zero_init": False})
    return net.to(device).eval(), f"preset {args.preset}, random weights (seed 0, no zero-init)"


def check_sources(args, net: UNet, n: int) -> tuple[torch.Tensor, str]:
    """(n source images in [0, 1], what they are): the first digits train images for 8x8x1
    nets where the dataset loads (it needs scikit-learn), else seeded uniform noise."""
    if tuple(net.image_shape) == (1, 8, 8):
        try:
            from cejobs.data import load_dataset

            return load_dataset("digits", None, "train").images(slice(0, n)), "digits train"
        except Exception as e:  # noqa: BLE001 - no scikit-learn (a bare GPU image)
            print(f"digits sources unavailable ({e}); using uniform noise", file=sys.stderr)
    g = torch.Generator().manual_seed(0)
    return torch.rand(n, *net.image_shape, generator=g), "uniform noise (seed 0)"


def relative_deviation(fast: torch.Tensor, ref: torch.Tensor,
                       source: torch.Tensor) -> torch.Tensor:
    """Per CE: ||fast - ref|| / ||ref - source||, in image space."""
    return (fast - ref).flatten(1).norm(dim=1) / (ref - source).flatten(1).norm(dim=1)


def check_sampler(args) -> dict:
    """The fast path against the fp32 eager sampler, same noise (module docstring)."""
    device = bench_device(args.device)
    if args.compile:
        use_inductor_cache(args.compile_cache)
    net, net_name = check_net(args, device)
    classes = net.num_classes
    b = args.batch
    n = (b + classes - 1) // classes  # each source gets one CE per class
    x, sources = check_sources(args, net, n)
    src = torch.arange(n).repeat_interleave(classes)[:b]
    target = torch.arange(classes).repeat(n)[:b]
    rep = torch.zeros(b, dtype=torch.long)
    source = x.repeat_interleave(classes, dim=0)[:b]
    mu = to_model_space(source).to(device)  # checkpoints we train are centered

    noise = CENoise(args.seed, src, target, rep)
    t0 = time.perf_counter()
    ref = sample_ce(copy.deepcopy(net), noise.latents(mu), mu, target.to(device),
                    sampler_params(args, "fp32"), randn_like=noise)
    sync(device)
    ref_s = time.perf_counter() - t0
    ref = to_image_space(ref).cpu()

    result = dict(bench="sampler-check", device=device_name(device), net=net_name,
                  sources=sources, method=args.method,
                  steps=args.steps, ces=b, w=args.w, reference="fp32 eager sample_ce",
                  reference_seconds=ref_s, tolerance=args.tolerance, torch=torch.__version__)
    precisions = [args.precision] + (["fp32"] if args.check_fp32 and args.precision != "fp32"
                                     else [])
    for precision in precisions:
        fast = FastSampler(copy.deepcopy(net), device, sampler_params(args, precision),
                           seed=args.seed, options=fast_options(args))
        fast.batch = max(args.fast_batch or b, b)
        t0 = time.perf_counter()
        out = fast.sample(mu, target, src, rep)
        sync(device)
        seconds = time.perf_counter() - t0
        dev = relative_deviation(to_image_space(out).cpu(), ref, source)
        result[f"fast_{precision}"] = dict(
            mode=fast.mode, median=float(dev.median()), q90=float(dev.quantile(0.9)),
            max=float(dev.max()), seconds=seconds, compile_seconds=fast.compile_seconds)
    result["value"] = result[f"fast_{args.precision}"]["median"]
    result["passed"] = result["value"] <= args.tolerance
    return result


def bench_fast_sampler(args) -> dict:
    """CE/s of the fast path on a preset with default (random) weights, or on `--model`; MFU
    of the whole step."""
    device = bench_device(args.device)
    use_inductor_cache(args.compile_cache)
    net, net_name = bench_net(args, device)
    eager_net = copy.deepcopy(net)
    params = sampler_params(args)
    b = args.batch
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand((b, *net.image_shape), generator=g) * 2 - 1).to(device)
    target = torch.arange(b) % net.num_classes
    src, rep = torch.arange(b), torch.zeros(b, dtype=torch.long)
    fast = FastSampler(net, device, params, seed=0, options=fast_options(args))
    t0 = time.perf_counter()
    fast.sample(mu, target, src, rep)  # compiles (or loads from the inductor cache)
    sync(device)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fast.sample(mu, target, src, rep)
        sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times) / args.steps
    flops = forward_flops(eager_net, torch.cat([mu, mu]), torch.full((2 * b,), 0.5, device=device),
                          torch.cat([target, target]).to(device))
    peak = matmul_peak(device, params.net_dtype, 8192 if device.type == "cuda" else 1024)
    result = dict(
        bench="sampler-fast", device=device_name(device), preset=args.preset, net=net_name,
        precision=args.precision, method=args.method, mode=fast.mode, batch_ces=b,
        steps_timed=args.steps, first_call_s=first_s, compile_seconds=fast.compile_seconds,
        step_ms=1e3 * step_s, ces_per_s_at_1000_steps=b / (step_s * 1000),
        gflop_per_image_forward=flops / (2 * b) / 1e9,
        achieved_tflops=flops / step_s / 1e12, matmul_peak_tflops=peak / 1e12,
        mfu=flops / step_s / peak, torch=torch.__version__,
    )
    if args.baseline:  # the fp32 eager sampler, same net, same batch, same run
        noise = CENoise(0, src, target, rep)
        lat = noise.latents(mu)
        eager_params = dataclasses.replace(params, steps=args.baseline_steps,
                                           net_dtype=torch.float32)

        def eager():
            sample_ce(eager_net, lat, mu, target.to(device), eager_params, randn_like=noise)

        eager()
        sync(device)
        t0 = time.perf_counter()
        eager()
        sync(device)
        base_step = (time.perf_counter() - t0) / args.baseline_steps
        result.update(fp32_eager_step_ms=1e3 * base_step,
                      fp32_eager_ces_per_s_at_1000_steps=b / (base_step * 1000),
                      speedup_vs_fp32_eager=base_step / step_s)
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def add_parser(sub) -> None:
    p = sub.add_parser("sampler", help="CEs/s of the sampler (eager, --fast), --check",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--preset", default="digits", choices=sorted(UNET_PRESETS))
    p.add_argument("--batch", type=int, default=40, help="CEs per batch (network sees 2x)")
    p.add_argument("--steps", type=int, default=20, help="sampler steps timed per run")
    p.add_argument("--precision", default=DEFAULT_PRECISION, choices=sorted(NET_PRECISIONS))
    p.add_argument("--method", default=SamplerParams.method)
    p.add_argument("--device", default="auto")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the U-Net, or with --fast the whole step")
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--fast", action="store_true", help="the fast path (fastpath.FastSampler)")
    p.add_argument("--check", action="store_true",
                   help="fast path vs fp32 eager with the same noise; exit 1 above --tolerance")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="--check: largest median ||fast - ref|| / ||ref - source||")
    p.add_argument("--check-fp32", action="store_true",
                   help="--check: also the fast path in fp32 (should be ~0)")
    p.add_argument("--model", default=None,
                   help="the diffusion model timed or checked, any kind --model of generate "
                        "takes (default: the preset with random weights; --check: the "
                        "shipped digits model)")
    p.add_argument("--uncond-model", default=None, help="with --model: its unconditional network")
    p.add_argument("--w", type=float, default=SamplerParams.w)
    p.add_argument("--sigma-ce", type=float, default=SamplerParams.sigma_ce)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--compile-backend", default="inductor",
                   help="--fast --compile: torch.compile backend (aot_eager: trace only)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="fast path without CUDA graphs")
    p.add_argument("--no-channels-last", action="store_true", help="fast path in NCHW")
    p.add_argument("--no-sdpa", action="store_true", help="fast path with einsum attention")
    p.add_argument("--triton-norm", action="store_true",
                   help="fast path with the one-pass GroupNorm+SiLU Triton kernel (CUDA)")
    p.add_argument("--fast-batch", type=int, default=None,
                   help="--check: pad the fast path's batch to this size (CEs do not depend "
                        "on it), to reuse the compiled graph of a `--fast --batch N` run")
    p.add_argument("--compile-cache", default=None,
                   help="inductor cache folder (default: $TORCHINDUCTOR_CACHE_DIR, else "
                        "~/.cache/cejobs/inductor)")
    p.add_argument("--baseline", action="store_true",
                   help="--fast: also time the fp32 eager sampler in the same run")
    p.add_argument("--baseline-steps", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="CPU: torch threads (0: all cores)")
    p.set_defaults(run=run)
