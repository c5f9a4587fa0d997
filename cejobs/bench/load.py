"""`python -m cejobs.bench load`: a tiny generation on each backend, on the idle machine and
then beside CPU burners (`python3 -c 'while 1: pass'`), with the default thread settings.

The run is `--sources 2 --steps 100 --method gaussian` (40 CEs); its wall time includes start-up
(imports, a private local Ray, a SLURM job's queueing), as a user sees it. Before
cejobs/threads.py, two OpenMP threads beside two burners took 4x as long as one thread. The
figure is loaded / idle wall time per backend; docs/performance.md records it.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cejobs.threads import openmp_wait

TINY = ["--sources", "2", "--steps", "100", "--method", "gaussian", "--no-progress"]
BACKEND_FLAGS = {
    "local": ["--backend", "local"],
    "ray": ["--backend", "ray"],
    "slurm": ["--backend", "slurm", "--workers", "1", "--slurm-cpus", "2", "--slurm-mem-gb", "2",
              "--timeout-min", "10"],
}


@contextlib.contextmanager
def burners(count: int):
    """`count` busy-looping processes for the duration of the block."""
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def tiny_run(backend: str, folder: Path) -> float:
    """Wall seconds of one tiny generation into a new store under `folder`."""
    store = folder / f"{backend}-{time.monotonic_ns()}.zarr"
    flags = [*BACKEND_FLAGS[backend], *TINY, "--store", str(store)]
    if backend == "slurm":
        flags += ["--slurm-log-dir", str(folder / "slurm-logs")]
    env = {**os.environ, "RAY_ADDRESS": "local"}  # a private local Ray, never a running one
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", *flags], capture_output=True,
                       text=True, env=env)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"{backend}: generate failed: {r.stderr.strip()[-400:]}")
    shutil.rmtree(store, ignore_errors=True)
    return wall


def bench_load(args) -> dict:
    backends = [b for b in args.backends if b != "slurm" or shutil.which("sbatch")]
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for backend in backends:
            idle = [tiny_run(backend, Path(tmp)) for _ in range(args.repeat)]
            with burners(args.burners):
                loaded = [tiny_run(backend, Path(tmp)) for _ in range(args.repeat)]
            results[backend] = dict(idle_s=statistics.median(idle),
                                    loaded_s=statistics.median(loaded),
                                    ratio=statistics.median(loaded) / statistics.median(idle))
    return dict(bench="load", burners=args.burners, cpus=len(os.sched_getaffinity(0)),
                openmp_wait=openmp_wait(), run=" ".join(TINY),
                skipped=[b for b in args.backends if b not in backends], results=results)


def add_parser(sub) -> None:
    import argparse

    p = sub.add_parser("load", formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                       help="tiny run per backend, idle and beside CPU burners")
    p.add_argument("--backends", nargs="+", default=["local", "ray", "slurm"],
                   choices=sorted(BACKEND_FLAGS))
    p.add_argument("--burners", type=int, default=2)
    p.add_argument("--repeat", type=int, default=2)
    p.set_defaults(run=bench_load)
