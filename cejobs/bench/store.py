"""`python -m cejobs.bench store`: the fraction of shard time spent writing zarr, read from a
finished store, or timed on a synthetic CIFAR10 shard on local disk and on S3 (s3.py), with
what each way of checksumming a chunk costs (docs/reliability.md)."""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from cejobs.bench.s3 import add_target_flags, bench_store_targets, synthetic_shard


def bench_store(args) -> dict:
    """Zarr write time of shards: read from a finished store, or timed on a synthetic
    CIFAR10-shaped shard (50 sources x 20 CEs x 3x32x32, random values: the worst case for
    compression) against the measured GPU shard time, on local disk and on S3 (s3.py)."""
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
    out = bench_store_targets(args)  # local disk, and S3 with --moto or --s3
    data, _ = synthetic_shard()
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


def add_parser(sub) -> None:
    p = sub.add_parser("store", help="zarr write share of a shard, local disk and S3",
                       formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--store", default=None, help="a finished store; unset: a synthetic shard")
    p.add_argument("--dir", default=None, help="folder for the synthetic store")
    p.add_argument("--shard-seconds", type=float, default=90.0,
                   help="shard compute time to compare with (H200, compiled bf16)")
    add_target_flags(p)
    p.add_argument("--obstore", action="store_true",
                   help="also write through zarr's ObjectStore on obstore")
    p.set_defaults(run=bench_store)
