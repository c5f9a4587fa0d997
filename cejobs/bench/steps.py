"""`python -m cejobs.bench steps`: what fewer Euler-Maruyama steps cost in CE quality (digits).

For each method and step count N (default 1000, 500, 250, 100) the same CEs are made from the
same Brownian path: the 1000-step run draws its per-CE Philox noise (cejobs.method.noise, as
generate does), and an N-step run uses the sums of each block of k = 1000/N consecutive increments,
scaled by 1/sqrt(k). Those are again i.i.d. N(0, I) per step, so an N-step CE has exactly the
distribution `generate --steps N` samples, and its distance to the 1000-step CE of the same noise
is the discretisation error alone (score_sde's Euler-Maruyama step, dt = -1/N; docs/math.md).

Reported per (method, N): L2 and L0 quantiles of the CEs, the standard classifier's accuracy
on them (argmax == target), and quantiles of the per-CE L2 distance to the 1000-step CE.
With --floor, the reference run is repeated with independent noise (seed + 1): the distance
between two CEs of the same source and target that differ only by chance, for scale.
Fewer steps are never the default: this measures the trade-off, it changes nothing.
"""

from __future__ import annotations

import math
import time

import torch

from cejobs.method.noise import CENoise
from cejobs.method.params import SamplerParams
from cejobs.method.sampler import sample_ce, to_image_space, to_model_space

QUANTILES = (0.1, 0.5, 0.9)


def coarse_noise(fine: torch.Tensor, steps: int) -> torch.Tensor:
    """(N, B, ...) noise of an N-step run from the (M, B, ...) noise of an M-step run, M = k N:
    block sums of k increments over sqrt(k) (the same Brownian path, sampled coarser)."""
    m = fine.shape[0]
    if m % steps:
        raise ValueError(f"{steps} steps do not divide the reference's {m}")
    k = m // steps
    return fine.reshape(steps, k, *fine.shape[1:]).sum(1) / math.sqrt(k)


def _quantiles(v: torch.Tensor) -> list[float]:
    levels = torch.tensor(QUANTILES, dtype=torch.float64)
    return [float(q) for q in torch.quantile(v.double(), levels)]


def bench_steps(args) -> dict:
    # numpy and the data only here: the other sampler benchmarks need only torch
    from cejobs.jobs.config import REPO_DATA
    from cejobs.data import load_dataset
    from cejobs.method.distances import l0_distance, l2_distance
    from cejobs.models.checkpoint import load_checkpoint

    torch.set_num_threads(args.threads)
    diffusion = load_checkpoint(args.model or REPO_DATA / "digits" / "diffusion.pt",
                                expect_kind="diffusion")
    classifier = load_checkpoint(args.classifier or REPO_DATA / "digits" / "classifier-standard.pt",
                                 expect_kind="classifier")
    net, clf = diffusion.model.eval(), classifier.model.eval()
    centered = bool(diffusion.meta.get("centered", True))
    data = load_dataset("digits", None, "train")
    classes = data.num_classes
    n = args.sources
    x = data.images(slice(0, n))
    # every source gets per_class CEs per class, as generate's plan (k = target * per_class + rep)
    k = classes * args.per_class
    src = torch.arange(n).repeat_interleave(k)
    target = torch.arange(classes).repeat_interleave(args.per_class).repeat(n)
    replicate = torch.arange(args.per_class).repeat(classes * n)
    mu_img = x.repeat_interleave(k, dim=0)
    ref_steps = max(args.steps)
    rows, t_all = [], time.perf_counter()
    for method in args.methods:
        ces = {s: [] for s in args.steps}
        floor = []
        for b0 in range(0, len(src), args.batch):
            b = slice(b0, b0 + args.batch)
            noise = CENoise(args.seed, src[b], target[b], replicate[b])
            mu = to_model_space(mu_img[b], centered)
            latents = noise.latents(mu)
            fine = torch.stack([noise(i, latents) for i in range(ref_steps)])
            for s in args.steps:
                z = coarse_noise(fine, s)
                with torch.no_grad():
                    m = sample_ce(net, latents, mu, target[b], method=method, w=args.w,
                                  sigma_ce=args.sigma_ce, steps=s,
                                  randn_like=lambda i, _x, z=z: z[i])
                ces[s].append(to_image_space(m, centered))
            if args.floor:  # the same CE with independent noise (seed + 1): the spread of CEs
                other = CENoise(args.seed + 1, src[b], target[b], replicate[b])
                with torch.no_grad():
                    m = sample_ce(net, other.latents(mu), mu, target[b], method=method, w=args.w,
                                  sigma_ce=args.sigma_ce, steps=ref_steps, randn_like=other)
                floor.append(to_image_space(m, centered))
        ref = torch.cat(ces[ref_steps])
        for s in args.steps:
            ce = torch.cat(ces[s])
            with torch.no_grad():
                pred = clf(ce).argmax(1)
            rows.append(dict(
                method=method, steps=s, ces=len(ce),
                l2_quantiles=_quantiles(l2_distance(mu_img, ce)),
                l0_quantiles=_quantiles(l0_distance(mu_img, ce)),
                standard_accuracy=float((pred == target).float().mean()),
                l2_to_1000_quantiles=_quantiles(l2_distance(ref, ce)),
            ))
        if args.floor:
            ce = torch.cat(floor)
            with torch.no_grad():
                pred = clf(ce).argmax(1)
            rows.append(dict(
                method=method, steps=f"{ref_steps}, seed {args.seed + 1}", ces=len(ce),
                l2_quantiles=_quantiles(l2_distance(mu_img, ce)),
                l0_quantiles=_quantiles(l0_distance(mu_img, ce)),
                standard_accuracy=float((pred == target).float().mean()),
                l2_to_1000_quantiles=_quantiles(l2_distance(ref, ce)),
            ))
    return dict(bench="steps", quantiles=list(QUANTILES), sources=n, per_class=args.per_class,
                seed=args.seed, model=diffusion.sha256[:12], classifier=classifier.sha256[:12],
                threads=args.threads, seconds=time.perf_counter() - t_all,
                torch=torch.__version__, rows=rows)


def markdown_table(result: dict) -> str:
    """The rows as a markdown table (docs/performance.md)."""
    def q(v):
        return " / ".join(f"{x:.3f}" for x in v)

    header = ("| method | steps | L2 q10 / q50 / q90 | L0 q10 / q50 / q90 | standard clf. accuracy "
              "| L2 to the reference CE (most steps, same noise), q10 / q50 / q90 |")
    lines = [header, "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['method']} | {r['steps']} | {q(r['l2_quantiles'])} | "
                     f"{q(r['l0_quantiles'])} | {100 * r['standard_accuracy']:.1f}% | "
                     f"{q(r['l2_to_1000_quantiles'])} |")
    return "\n".join(lines)


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("steps", help="CE quality at fewer sampler steps (digits)",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sources", type=int, default=30, help="first N digits train images")
    p.add_argument("--per-class", type=int, default=1)
    p.add_argument("--steps", type=int, nargs="+", default=[1000, 500, 250, 100],
                   help="step counts; each must divide the largest")
    p.add_argument("--methods", nargs="+", default=["boltzmann-exact", "gaussian"],
                   choices=["gaussian", "boltzmann", "boltzmann-exact"])
    p.add_argument("--w", type=float, default=SamplerParams.w)
    p.add_argument("--sigma-ce", type=float, default=SamplerParams.sigma_ce)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch", type=int, default=40, help="CEs per sampler batch")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--model", default=None, help="diffusion checkpoint (default: shipped digits)")
    p.add_argument("--classifier", default=None,
                   help="standard classifier (default: data/digits/classifier-standard.pt)")
    p.add_argument("--floor", action=argparse.BooleanOptionalAction, default=True,
                   help="also make the reference CEs with independent noise (seed + 1): the "
                        "distance between two CEs that differ only by chance")
    p.add_argument("--markdown", action="store_true", help="also print the markdown table")
    p.set_defaults(run=bench_steps)
