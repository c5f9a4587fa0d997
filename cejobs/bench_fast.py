"""The fast path's benchmarks (docs/performance.md, "Fast path"); they need only torch (and numpy).

- `bench sampler --fast`: CE/s of `fastpath.FastSampler`, with compile time, MFU of the whole
  step against a matmul peak measured in the same run, and (`--baseline`) the fp32 eager
  sampler's CE/s in the same run.
- `bench sampler --check`: the fast path's CEs against the fp32 eager reference made with the
  same per-CE noise; the median over CEs of ||fast - ref|| / ||ref - source|| (image space)
  must be at most `--tolerance` (0.05), else exit status 1.
`bench generate` (the worker end to end, without a store) is in cejobs/bench_generate.py.
"""

from __future__ import annotations

import copy
import statistics
import sys
import time
from pathlib import Path

import torch

from cejobs.method.fastpath import FastOptions, FastSampler, use_inductor_cache
from cejobs.models.unet import UNET_PRESETS, UNet
from cejobs.method.noise import CENoise
from cejobs.method.sampler import sample_ce, to_image_space, to_model_space

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def _device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _options(args) -> FastOptions:
    return FastOptions(compile=args.compile, cuda_graphs=not args.no_cuda_graphs,
                       channels_last=not args.no_channels_last, sdpa=not args.no_sdpa,
                       triton_norm=args.triton_norm,
                       compile_backend=args.compile_backend)


def check_net(args, device: torch.device) -> tuple[UNet, str]:
    """The network of the check: `--model`, else the shipped digits model for the digits
    preset, else the preset with random weights. Random weights use zero_init=False: DDPM's
    zero-initialised output layers would make eps = 0 and the check trivial. A random network
    is no score, and its guided sampler is chaotic (docs/performance.md): its value measures
    that, not the fast path; check with a trained checkpoint."""
    from cejobs.jobs.config import REPO_DATA
    from cejobs.models.checkpoint import load_checkpoint

    path = Path(args.model) if args.model else REPO_DATA / "digits" / "diffusion.pt"
    if args.model or (args.preset == "digits" and path.exists()):
        ckpt = load_checkpoint(path, expect_kind="diffusion")
        return ckpt.model.to(device).eval(), f"{path.name} ({ckpt.sha256[:12]})"
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


def relative_deviation(fast: torch.Tensor, ref: torch.Tensor, source: torch.Tensor) -> torch.Tensor:
    """Per CE: ||fast - ref|| / ||ref - source||, in image space."""
    return (fast - ref).flatten(1).norm(dim=1) / (ref - source).flatten(1).norm(dim=1)


def check_sampler(args) -> dict:
    device = _device(args.device)
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
    common = dict(method=args.method, w=args.w, sigma_ce=args.sigma_ce, steps=args.steps)

    noise = CENoise(args.seed, src, target, rep)
    t0 = time.perf_counter()
    ref = sample_ce(copy.deepcopy(net), noise.latents(mu), mu, target.to(device),
                    randn_like=noise, **common)
    _sync(device)
    ref_s = time.perf_counter() - t0
    ref = to_image_space(ref).cpu()

    result = dict(bench="sampler-check", device=_name(device), net=net_name, sources=sources,
                  method=args.method,
                  steps=args.steps, ces=b, w=args.w, reference="fp32 eager sample_ce",
                  reference_seconds=ref_s, tolerance=args.tolerance, torch=torch.__version__)
    precisions = [args.precision] + (["fp32"] if args.check_fp32 and args.precision != "fp32"
                                     else [])
    for precision in precisions:
        fast = FastSampler(copy.deepcopy(net), device, seed=args.seed, net_dtype=DTYPES[precision],
                           options=_options(args), **common)
        fast.batch = max(args.fast_batch or b, b)
        t0 = time.perf_counter()
        out = fast.sample(mu, target, src, rep)
        _sync(device)
        seconds = time.perf_counter() - t0
        dev = relative_deviation(to_image_space(out).cpu(), ref, source)
        result[f"fast_{precision}"] = dict(
            mode=fast.mode, median=float(dev.median()), q90=float(dev.quantile(0.9)),
            max=float(dev.max()), seconds=seconds, compile_seconds=fast.compile_seconds)
    result["value"] = result[f"fast_{args.precision}"]["median"]
    result["passed"] = result["value"] <= args.tolerance
    return result


def _name(device: torch.device) -> str:
    import platform

    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{platform.processor() or platform.machine()} CPU, {torch.get_num_threads()} threads"


def bench_fast_sampler(args) -> dict:
    """CE/s of the fast path on a preset with default (random) weights; MFU of the whole step."""
    from cejobs.bench import forward_flops, matmul_peak

    device = _device(args.device)
    use_inductor_cache(args.compile_cache)
    torch.manual_seed(0)
    net = UNet(**UNET_PRESETS[args.preset]).to(device).eval()
    eager_net = copy.deepcopy(net)
    dtype = DTYPES[args.precision]
    b = args.batch
    shape = (b, *net.image_shape)
    g = torch.Generator().manual_seed(0)
    mu = (torch.rand(shape, generator=g) * 2 - 1).to(device)
    target = torch.arange(b) % net.num_classes
    src, rep = torch.arange(b), torch.zeros(b, dtype=torch.long)
    fast = FastSampler(net, device, seed=0, method=args.method, steps=args.steps,
                       net_dtype=dtype, options=_options(args))
    t0 = time.perf_counter()
    fast.sample(mu, target, src, rep)  # compiles (or loads from the inductor cache)
    _sync(device)
    first_s = time.perf_counter() - t0
    times = []
    for _ in range(args.repeat):
        t0 = time.perf_counter()
        fast.sample(mu, target, src, rep)
        _sync(device)
        times.append(time.perf_counter() - t0)
    step_s = statistics.median(times) / args.steps
    flops = forward_flops(eager_net, torch.cat([mu, mu]), torch.full((2 * b,), 0.5, device=device),
                          torch.cat([target, target]).to(device))
    peak = matmul_peak(device, dtype, 8192 if device.type == "cuda" else 1024)
    result = dict(
        bench="sampler-fast", device=_name(device), preset=args.preset, precision=args.precision,
        method=args.method, mode=fast.mode, batch_ces=b, steps_timed=args.steps,
        first_call_s=first_s, compile_seconds=fast.compile_seconds,
        step_ms=1e3 * step_s, ces_per_s_at_1000_steps=b / (step_s * 1000),
        gflop_per_image_forward=flops / (2 * b) / 1e9,
        achieved_tflops=flops / step_s / 1e12, matmul_peak_tflops=peak / 1e12,
        mfu=flops / step_s / peak, torch=torch.__version__,
    )
    if args.baseline:  # the fp32 eager sampler, same net, same batch, same run
        noise = CENoise(0, src, target, rep)
        lat = noise.latents(mu)

        def eager():
            sample_ce(eager_net, lat, mu, target.to(device), steps=args.baseline_steps,
                      method=args.method, randn_like=noise)

        eager()
        _sync(device)
        t0 = time.perf_counter()
        eager()
        _sync(device)
        base_step = (time.perf_counter() - t0) / args.baseline_steps
        result.update(fp32_eager_step_ms=1e3 * base_step,
                      fp32_eager_ces_per_s_at_1000_steps=b / (base_step * 1000),
                      speedup_vs_fp32_eager=base_step / step_s)
    if device.type == "cuda":
        result["max_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return result


def bench_fusion(args) -> dict:
    """What torch.compile emits for the U-Net's GroupNorm -> SiLU -> conv under bf16 autocast:
    the generated kernels' names, and whether one kernel holds both the GroupNorm and the SiLU
    (statistics, normalisation, SiLU and the bf16 cast in one pass)."""
    import re

    import torch.nn.functional as F
    from torch._inductor.utils import run_and_get_code

    device = _device(args.device)
    torch.manual_seed(0)
    c = args.channels
    norm = torch.nn.GroupNorm(min(32, c // 4), c, eps=1e-6).to(device)
    conv = torch.nn.Conv2d(c, c, 3, padding=1).to(device)

    def block(x):
        with torch.autocast(device.type, dtype=torch.bfloat16):
            return conv(F.silu(norm(x)))

    x = torch.randn(args.batch, c, args.size, args.size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.no_grad():
        _, code = run_and_get_code(torch.compile(block), x)
    names = sorted(set(re.findall(r"\b((?:triton|cpp)_\w*fused\w*)", "\n".join(code))))
    return dict(bench="fusion", device=_name(device), shape=list(x.shape), kernels=names,
                group_norm_and_silu_in_one_kernel=any("group_norm" in n and "silu" in n
                                                      for n in names),
                torch=torch.__version__)


def add_fusion_parser(sub) -> None:
    import argparse

    p = sub.add_parser("fusion", help="kernels torch.compile emits for GroupNorm + SiLU + conv",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--device", default="auto")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--channels", type=int, default=128, help="paper U-Net: 128 at 32x32")
    p.add_argument("--size", type=int, default=32)


def add_sampler_flags(p) -> None:
    p.add_argument("--fast", action="store_true", help="the fast path (fastpath.FastSampler)")
    p.add_argument("--check", action="store_true",
                   help="fast path vs fp32 eager with the same noise; exit 1 above --tolerance")
    p.add_argument("--tolerance", type=float, default=0.05,
                   help="--check: largest median ||fast - ref|| / ||ref - source||")
    p.add_argument("--check-fp32", action="store_true",
                   help="--check: also the fast path in fp32 (should be ~0)")
    p.add_argument("--model", default=None, help="--check: a diffusion checkpoint")
    p.add_argument("--w", type=float, default=15.0)
    p.add_argument("--sigma-ce", type=float, default=0.2)
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


def main_check(result: dict) -> int:
    if not result["passed"]:
        print(f"check failed: median {result['value']:.4f} > {result['tolerance']}",
              file=sys.stderr)
        return 1
    return 0
