"""Object storage in the benchmarks (docs/store.md, "Object storage").

- `python -m cejobs.bench store --moto` (or `--s3 URL`): the synthetic CIFAR10 shard written
  to local disk and to S3, through the store (s3fs) and, with `--obstore`, through zarr's
  ObjectStore on obstore; each read back and compared. Reported as seconds per shard and as
  the share of a shard's compute time (`--shard-seconds`) spent writing.
- `python -m cejobs.bench scale --moto --shards 10000`: a store of that many shards, every one
  done, then the time of `status` and of resume planning (open, repair without decoding,
  pending shards), and the store's objects.

`--moto` starts moto's S3 server on 127.0.0.1 for the run (pip install 'moto[server]'); `--s3`
uses whatever the AWS environment points at. Credentials come from that environment only.
"""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path
from typing import Iterator

import numpy as np

BENCH_BUCKET = "cejobs-bench"


@contextlib.contextmanager
def moto_server() -> Iterator[str]:
    """moto's S3 server on a free port of 127.0.0.1 and a bucket; the AWS variables that
    reach it are set in os.environ while it runs. Yields the bucket's URL."""
    import boto3

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen([sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p",
                             str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    env = {"AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}", "AWS_ACCESS_KEY_ID": "bench",
           "AWS_SECRET_ACCESS_KEY": "bench", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_EC2_METADATA_DISABLED": "true"}
    saved = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("moto server did not start")
                time.sleep(0.2)
        boto3.client("s3").create_bucket(Bucket=BENCH_BUCKET)
        yield f"s3://{BENCH_BUCKET}"
    finally:
        proc.kill()
        proc.wait()
        for k, v in saved.items():
            os.environ.pop(k, None) if v is None else os.environ.__setitem__(k, v)


def target(args) -> contextlib.AbstractContextManager:
    """The bucket URL of `--moto` (a server for the run) or `--s3`; None for neither."""
    if args.moto:
        return moto_server()
    return contextlib.nullcontext(args.s3.rstrip("/") if args.s3 else None)


def synthetic_shard(n: int = 50, k: int = 20, shards: int = 4):
    """A CIFAR10-sized shard (n sources x k CEs x 3x32x32 float32, random: the worst case for
    compression) and the layout of a store of `shards` such shards."""
    from cejobs.store.layout import Layout

    rng = np.random.default_rng(0)
    data = {"source/x": rng.random((n, 3, 32, 32), dtype=np.float32),
            "source/y": rng.integers(0, 10, n), "source/index": np.arange(n),
            "ce/x": rng.random((n, k, 3, 32, 32), dtype=np.float32),
            "ce/target": np.tile(np.repeat(np.arange(10), k // 10), (n, 1)),
            "ce/l2": rng.random((n, k), dtype=np.float32),
            "ce/l0": rng.random((n, k), dtype=np.float32)}
    return data, Layout(n * shards, k, 10, (3, 32, 32), n)


def store_write_times(where, data: dict, layout) -> list[float]:
    """Seconds of each shard's write through the store (CEStore.write_shard), checked by
    reading every shard back."""
    from cejobs.store.layout import generation_arrays
    from cejobs.store.create import create_or_open

    store = create_or_open(where, {}, layout, generation_arrays(), {})
    seconds = [store.write_shard(s, data) for s in range(layout.num_shards)]
    _check(lambda name, rows: store.read_rows(name, rows), data, layout)
    return seconds


def obstore_write_times(url: str, data: dict, layout) -> list[float]:
    """The same writes through zarr's ObjectStore on obstore (arrays as the store makes them)."""
    import zarr
    from obstore.store import S3Store
    from zarr.storage import ObjectStore

    from cejobs.store.layout import generation_arrays
    from cejobs.store.create import create_arrays
    from cejobs.store.format import WRITE_CONFIG

    http = os.environ.get("AWS_ENDPOINT_URL", "").startswith("http://")
    s3 = S3Store.from_url(url, client_options={"allow_http": http})
    group = zarr.open_group(ObjectStore(s3), mode="w-", zarr_format=3)
    create_arrays(group, generation_arrays(), layout)
    arrays = {name: group[name].with_config(WRITE_CONFIG) for name in data}
    done = group["shard/done"]
    seconds = []
    for s in range(layout.num_shards):
        t0 = time.perf_counter()
        for name, values in data.items():
            arrays[name][layout.rows(s)] = values
        seconds.append(time.perf_counter() - t0)
        done[s] = True
    _check(lambda name, rows: np.asarray(arrays[name][rows]), data, layout)
    return seconds


def _check(read, data: dict, layout) -> None:
    for s in range(layout.num_shards):
        for name, values in data.items():
            if not np.array_equal(read(name, layout.rows(s)), values):
                raise SystemExit(f"shard {s}: {name} read back differs")


def bench_store_targets(args) -> dict:
    """The synthetic shard on local disk and, with --moto or --s3, on S3 (module docstring)."""
    data, layout = synthetic_shard()
    out = {}
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        out["local disk"] = store_write_times(Path(tmp) / "bench.zarr", data, layout)
    with target(args) as bucket:
        if bucket:
            run = f"{bucket}/bench-{uuid.uuid4().hex[:8]}"
            out["s3 (s3fs, the store)"] = store_write_times(f"{run}/s3fs.zarr", data, layout)
            if args.obstore:
                out["s3 (obstore)"] = obstore_write_times(f"{run}/obstore.zarr", data, layout)
    where = "moto on 127.0.0.1" if args.moto else (args.s3 or "-")
    return dict(bench="store", synthetic="cifar10 shard, 50 sources x 20 CEs, float32",
                ce_x_mib=data["ce/x"].nbytes / 2**20, s3=where, shards=layout.num_shards,
                gpu_shard_seconds=args.shard_seconds, read_back="equal",
                results={k: dict(write_seconds=v, write_seconds_mean=float(np.mean(v)),
                                 write_fraction=float(np.mean(v)) / args.shard_seconds)
                         for k, v in out.items()})


def bench_scale(args) -> dict:
    """Status and resume planning of a store of `--shards` done shards (module docstring)."""
    import zarr

    from cejobs.jobs.kinds import pending_shards
    from cejobs.store.repair import repair
    from cejobs.store.layout import Layout, generation_arrays
    from cejobs.store.create import create_or_open
    from cejobs.store.store import CEStore
    from cejobs.jobs.kinds import KINDS
    from cejobs.jobs.tasks import ShardTask
    from cejobs.drivers.status import store_status

    n = args.shards  # one source per shard: the object count is what is measured
    layout = Layout(n, 2, 2, (1, 2, 2), 1)
    with target(args) as bucket, tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        where = (f"{bucket}/scale-{uuid.uuid4().hex[:8]}.zarr" if bucket
                 else str(Path(tmp) / "scale.zarr"))
        store = create_or_open(where, {}, layout, generation_arrays(), {})
        t0 = time.perf_counter()
        with zarr.config.set({"async.concurrency": 64}):
            for name in store.attrs["arrays"]:
                arr = store.array(name)
                arr[:] = (np.ones(arr.shape, dtype=arr.dtype) if name != "shard/started_at"
                          else np.zeros(arr.shape))
        populate = time.perf_counter() - t0
        objects = len(store.storage.keys())
        t0 = time.perf_counter()
        st = store_status(CEStore.open(where))
        status_s = time.perf_counter() - t0
        t0 = time.perf_counter()
        opened = CEStore.open(where)
        found = repair(opened)
        pending = pending_shards(opened, ShardTask(KINDS["generate"], where, None))
        plan_s = time.perf_counter() - t0
    assert st.shards_done == n and not found.findings and not pending
    return dict(bench="scale", store="moto on 127.0.0.1" if args.moto else (args.s3 or
                "local disk"), shards=n, objects=objects, populate_seconds=populate,
                status_seconds=status_s, resume_planning_seconds=plan_s)


def add_target_flags(p) -> None:
    """--moto and --s3: the S3 bucket a benchmark writes to (module docstring)."""
    p.add_argument("--moto", action="store_true",
                   help="start moto's S3 server on 127.0.0.1 for the run")
    p.add_argument("--s3", default=None, help="s3://bucket[/prefix] from the AWS env")


def add_parser(sub) -> None:
    p = sub.add_parser("scale", help="status and resume planning of a store of many shards")
    add_target_flags(p)
    p.add_argument("--shards", type=int, default=10000)
    p.add_argument("--dir", default=None, help="folder for a local-disk store")
    p.set_defaults(run=bench_scale)
