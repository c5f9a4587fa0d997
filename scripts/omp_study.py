"""The OpenMP wait study behind cejobs/threads.py's default (docs/performance.md, "OpenMP wait:
measured"); scripts/omp_study.sh runs it.

For each wait setting (passive, active, bounded spins, the cejobs default, and the default with
one thread per worker and more workers) it measures, interleaved so that a change in the
machine's load hits every setting alike (each repetition starts the order of settings one
further on):

- `python -m cejobs.bench sampler --device cpu` (digits, batch 40): CE/s idle and beside
  `--burners` CPU burners;
- the tiny run of `python -m cejobs.bench load` (`--sources 2 --steps 100 --method gaussian`,
  start-up included) on each backend (local, Ray, SLURM when sbatch is on PATH), idle and
  beside the burners: wall seconds and loaded / idle.

Settings reach the runs through the environment (a set OMP_WAIT_POLICY, GOMP_SPINCOUNT or
KMP_BLOCKTIME keeps cejobs from setting its own). Prints a markdown table with medians, every
value, and the 1-minute load average around each block; --json saves the raw figures.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from cejobs.threads import BOUNDED_WAIT, WAIT_VARIABLES, openmp_runtime

TINY = ["--sources", "2", "--steps", "100", "--method", "gaussian", "--no-progress"]
BACKEND_FLAGS = {
    "local": ["--backend", "local"],
    "ray": ["--backend", "ray"],
    "slurm": ["--backend", "slurm", "--workers", "1", "--slurm-cpus", "2", "--slurm-mem-gb", "2",
              "--timeout-min", "10"],
}
# One thread per worker, as many workers as CPUs (the local backend has one worker).
ONE_THREAD_FLAGS = {
    "local": ["--threads", "1"],
    "ray": ["--workers", "2", "--threads", "1"],
    "slurm": ["--workers", "2", "--slurm-cpus", "1", "--threads", "1"],
}
SPIN_VALUES = {"libgomp": ("GOMP_SPINCOUNT", ["2000", "5000", "20000", "200000"]),
               "libiomp5": ("KMP_BLOCKTIME", ["1", "10", "50"]),
               "libomp": ("KMP_BLOCKTIME", ["1", "10", "50"])}


def settings(runtime: str | None) -> dict[str, dict]:
    """name -> env (variables to set) and one_thread (flags for one thread per worker)."""
    out = {"passive": dict(env={"OMP_WAIT_POLICY": "PASSIVE"}),
           "active": dict(env={"OMP_WAIT_POLICY": "ACTIVE"})}
    if runtime == "libgomp":  # the runtime's own default: no policy, 300,000 spins
        out["libgomp default"] = dict(env={"GOMP_SPINCOUNT": "300000"})
    name, values = SPIN_VALUES.get(runtime or "", ("", []))
    for value in values:
        out[f"{name}={value}"] = dict(env={name: value})
    default = BOUNDED_WAIT.get(runtime or "")
    label = f"cejobs default ({'='.join(default)})" if default else "cejobs default"
    out[label] = dict(env={})
    out["default, 1 thread/worker"] = dict(env={}, one_thread=True)
    return out


def load_average() -> float:
    return os.getloadavg()[0]


@contextlib.contextmanager
def burners(count: int):
    procs = [subprocess.Popen([sys.executable, "-c", "while 1: pass"]) for _ in range(count)]
    try:
        yield
    finally:
        for p in procs:
            p.kill()
            p.wait()


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in WAIT_VARIABLES}
    env.update(extra, RAY_ADDRESS="local", PYTHONUNBUFFERED="1")
    return env


def sampler(setting: dict) -> float:
    """CE/s at 1000 steps of bench sampler; one thread: pinned to one CPU (taskset)."""
    prefix = ["taskset", "-c", str(min(os.sched_getaffinity(0)))] \
        if setting.get("one_thread") else []
    r = subprocess.run([*prefix, sys.executable, "-m", "cejobs.bench", "sampler", "--device",
                        "cpu"], capture_output=True, text=True, env=clean_env(setting["env"]))
    if r.returncode:
        raise SystemExit(f"bench sampler failed: {r.stderr.strip()[-400:]}")
    return json.loads(r.stdout)["ces_per_s_at_1000_steps"]


def tiny_run(backend: str, setting: dict, folder: Path) -> float:
    store = folder / f"{backend}-{time.monotonic_ns()}.zarr"
    flags = [*BACKEND_FLAGS[backend], *TINY, "--store", str(store)]
    if setting.get("one_thread"):
        flags += ONE_THREAD_FLAGS[backend]
    if backend == "slurm":
        flags += ["--slurm-log-dir", str(folder / "slurm-logs")]
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cejobs.generate", *flags], capture_output=True,
                       text=True, env=clean_env(setting["env"]))
    wall = time.perf_counter() - t0
    if r.returncode:
        raise SystemExit(f"{backend}: generate failed: {r.stderr.strip()[-400:]}")
    shutil.rmtree(store, ignore_errors=True)
    return wall


def measure(args, table: dict[str, dict]) -> list[str]:
    """Fill table[setting][figure] with lists of values; returns the load notes."""
    notes = []

    def block(label: str, loaded: bool, fn) -> None:
        before = load_average()
        names = list(table)
        names = names[rep % len(names):] + names[:rep % len(names)]  # each leads once in turn
        with burners(args.burners) if loaded else contextlib.nullcontext():
            for name in names:
                setting = table[name]
                key = f"{label} {'loaded' if loaded else 'idle'}"
                setting.setdefault(key, []).append(fn(setting))
                print(f"  {name:28s} {key:16s} {setting[key][-1]:.3f}", file=sys.stderr)
        notes.append(f"{label} {'loaded' if loaded else 'idle'}: load {before:.2f} -> "
                     f"{load_average():.2f}")

    backends = [b for b in args.backends if b != "slurm" or shutil.which("sbatch")]
    with tempfile.TemporaryDirectory() as tmp:
        for rep in range(args.repeat):
            print(f"repetition {rep + 1}/{args.repeat}", file=sys.stderr)
            for loaded in (False, True):
                if not args.no_sampler:
                    block("sampler", loaded, lambda s: sampler(s))
                for backend in backends:
                    block(backend, loaded, lambda s, b=backend: tiny_run(b, s, Path(tmp)))
    return notes


def markdown(table: dict[str, dict], columns: list[str]) -> str:
    """One row per setting: per figure the median (every value), and loaded / idle."""
    head = ["setting"]
    for c in columns:
        unit = "CE/s" if c == "sampler" else "s"
        head += [f"{c} idle ({unit})", f"{c} loaded ({unit})", f"{c} loaded/idle"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for name, figures in table.items():
        row = [name]
        for c in columns:
            idle, loaded = figures.get(f"{c} idle"), figures.get(f"{c} loaded")
            if not idle or not loaded:
                row += ["", "", ""]
                continue
            mi, ml = statistics.median(idle), statistics.median(loaded)
            ratio = mi / ml if c == "sampler" else ml / mi  # slowdown either way
            row += [f"{mi:.2f} ({', '.join(f'{v:.2f}' for v in idle)})",
                    f"{ml:.2f} ({', '.join(f'{v:.2f}' for v in loaded)})", f"{ratio:.2f}x"]
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--burners", type=int, default=2)
    p.add_argument("--backends", nargs="*", default=["local", "ray", "slurm"],
                   choices=sorted(BACKEND_FLAGS))
    p.add_argument("--settings", nargs="*", default=None, help="names to keep (default: all)")
    p.add_argument("--no-sampler", action="store_true")
    p.add_argument("--json", default=None, help="save the raw figures here")
    args = p.parse_args()
    runtime = openmp_runtime()
    table = {name: s for name, s in settings(runtime).items()
             if args.settings is None or name in args.settings}
    started = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    notes = measure(args, table)
    columns = (["sampler"] if not args.no_sampler else []) + [
        b for b in args.backends if b != "slurm" or shutil.which("sbatch")]
    print(f"OpenMP runtime: {runtime}; {len(os.sched_getaffinity(0))} CPUs; {args.burners} "
          f"burners; medians of {args.repeat}; started {started}")
    print()
    print(markdown(table, columns))
    print()
    print("1-minute load average around each block: " + "; ".join(notes))
    if args.json:
        Path(args.json).write_text(json.dumps(dict(runtime=runtime, notes=notes, table=table),
                                              indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
