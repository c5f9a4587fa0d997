"""`python -m cejobs.bench`: speed and memory, measured (results go to docs/performance.md).

Subcommands:
  sampler   CEs/s of the augmented-score sampler for a U-Net preset, with FLOPs and MFU against
            a bf16/fp32 matmul peak measured on the same device in the same run (nanoGPT's
            estimate_mfu habit). Needs only torch: it runs on a bare GPU image.
            --fast: the fast path (cejobs/method/fastpath.py); --check: its equivalence check.
  scaling   CE throughput of the Ray backend with 1 and 2 CPU workers on a real local Ray.
  store     Fraction of shard time spent writing zarr, read from a finished store, or of a
            synthetic CIFAR10 shard on local disk and S3 (--moto, --s3; cejobs/bench/s3.py).
  scale     Status and resume-planning time of a store of 10,000 done shards (local or S3).
  memory    Peak RSS of the generate driver as the number of sources grows.
  train     Seconds per training iteration of a U-Net preset (forward, backward, Adam).
  generate  The generation worker's shards end to end (start-up, loading, sampling, writes),
            without a store: runs where zarr is not installed.
  fusion    Which kernels torch.compile emits for GroupNorm + SiLU + conv (bf16).
  steps     CE quality at 1000, 500, 250, 100 steps on digits (same Brownian path per CE).
  load      A tiny generation per backend, idle and beside CPU burners (cejobs/bench/load.py).
"""

from __future__ import annotations

import argparse
import json
import sys

from cejobs.bench import fusion, generate, load, runs, s3, sampler, steps, store, train
from cejobs.threads import set_threads


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="python -m cejobs.bench", description=__doc__,
                                  formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = top.add_subparsers(dest="bench", required=True)
    sampler.add_parser(sub)
    runs.add_parsers(sub)  # scaling, memory
    train.add_parser(sub)
    store.add_parser(sub)
    s3.add_parser(sub)  # scale
    steps.add_parser(sub)
    generate.add_parser(sub)
    fusion.add_parser(sub)
    load.add_parser(sub)
    return top


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    if args.bench in ("sampler", "train") and args.device in ("auto", "cpu"):
        set_threads(getattr(args, "threads", 0))
    result = args.run(args)
    print(json.dumps(result, indent=2))
    if getattr(args, "markdown", False):
        print(steps.markdown_table(result))
    if result.get("passed") is False:  # sampler --check
        print(f"check failed: median {result['value']:.4f} > {result['tolerance']}",
              file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
