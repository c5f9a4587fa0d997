"""CPU threads: how many a worker may use, and how long idle OpenMP threads spin.

On a loaded machine (a shared login node, a SLURM node where a task has fewer CPUs than it
sees, CI) torch's OpenMP threads spin-waiting for partners that were not scheduled took 4x the
wall time and 11x the CPU of one thread (docs/performance.md, "CPU threads under load"). A
fully passive wait (threads sleep at once) cures that but makes every one of the U-Net's many
small parallel regions pay a wake-up, which slows the CPU sampler on an idle machine
(docs/performance.md, "OpenMP wait: measured"). Two rules:

- a worker uses at most the CPUs it may run on (affinity mask, SLURM_CPUS_PER_TASK, cgroup
  quota), never os.cpu_count();
- idle OpenMP threads spin briefly, then sleep: a bounded spin, set with the knob of the
  OpenMP runtime torch ships with (GOMP_SPINCOUNT for GNU libgomp, KMP_BLOCKTIME for Intel's
  libiomp5 and LLVM's libomp; OMP_WAIT_POLICY=PASSIVE where the runtime is unknown). The
  runtime reads it once, when torch loads it, so `cejobs/__init__.py` sets it before any
  cejobs module imports torch; the runtime is therefore found from the files in torch's
  installed lib folder, without importing torch. A user's own OMP_WAIT_POLICY,
  GOMP_SPINCOUNT or KMP_BLOCKTIME wins: then cejobs sets none of them.
"""

from __future__ import annotations

import importlib.util
import math
import os
import sys
from pathlib import Path

from cejobs.slurm_env import current_job

# The variables through which a user chooses the OpenMP wait; any one of them set: cejobs
# leaves the wait alone.
WAIT_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "KMP_BLOCKTIME")
# Library file-name prefixes (Linux .so, macOS .dylib, Windows .dll), most specific first:
# libiomp5 before libomp before libgomp ("libomp" is not a prefix of "libgomp").
RUNTIME_FILES = (("libiomp5", "libiomp5"), ("libomp", "libomp"), ("libgomp", "libgomp"))
# The bounded spin per runtime (docs/performance.md, "OpenMP wait: measured"). libgomp counts
# spins, about 100,000 per ms by its own estimate: 2000 is some 20 us, as fast as a passive
# wait beside busy processes and faster on a quiet machine; 5000 and more ran up to 3x slower
# beside them. Intel's and LLVM's runtimes take whole ms: 1 ms is fifty times that spin, so
# they get 0, the passive wait.
BOUNDED_WAIT = {
    "libgomp": ("GOMP_SPINCOUNT", "2000"),
    "libiomp5": ("KMP_BLOCKTIME", "0"),
    "libomp": ("KMP_BLOCKTIME", "0"),
}
UNKNOWN_RUNTIME_WAIT = ("OMP_WAIT_POLICY", "PASSIVE")


def torch_lib_folders() -> list[Path]:
    """Folders torch loads its OpenMP runtime from: torch/lib of the installed torch (pip
    wheels ship it there), then the environment's own lib folder (conda builds link it)."""
    folders = []
    spec = importlib.util.find_spec("torch")  # finds the package without importing it
    if spec is not None and spec.submodule_search_locations:
        folders += [Path(p) / "lib" for p in spec.submodule_search_locations]
    folders.append(Path(sys.prefix) / ("Library/bin" if os.name == "nt" else "lib"))
    return folders


def openmp_runtime(folders: list[Path] | None = None) -> str | None:
    """The OpenMP runtime torch uses: "libgomp", "libiomp5" or "libomp"; None when not found.
    The first folder holding one decides (torch's own lib folder before the environment's)."""
    for folder in torch_lib_folders() if folders is None else folders:
        try:
            names = [entry.name for entry in folder.iterdir()]
        except OSError:
            continue
        for prefix, runtime in RUNTIME_FILES:
            if any(name.startswith(prefix) for name in names):
                return runtime
    return None


def openmp_wait_default(runtime: str | None = None) -> tuple[str, str] | None:
    """Bound how long idle OpenMP threads spin (see above), unless the environment already
    chooses the wait. Returns the variable and value set, or None when the user's choice
    stands. `runtime`: as openmp_runtime() names it; None detects it."""
    if any(name in os.environ for name in WAIT_VARIABLES):
        return None
    setting = BOUNDED_WAIT.get(runtime or openmp_runtime() or "", UNKNOWN_RUNTIME_WAIT)
    os.environ[setting[0]] = setting[1]
    return setting


def openmp_wait() -> str:
    """The OpenMP wait settings in this process's environment, for a worker's report."""
    return " ".join(f"{name}={os.environ[name]}" for name in WAIT_VARIABLES
                    if name in os.environ) or "runtime default"


def _cgroup_cpus(root: Path = Path("/sys/fs/cgroup")) -> int | None:
    """CPUs allowed by a cgroup v2 quota ("200000 100000" in cpu.max is 2), if any."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return None
    if quota == "max":
        return None
    return max(1, math.ceil(int(quota) / int(period)))


def available_cpus() -> int:
    """CPUs this process may use: its affinity mask, capped by SLURM_CPUS_PER_TASK (a task's
    allocation) and by a cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        n = os.cpu_count() or 1
    if (slurm := current_job().cpus_per_task) is not None:
        n = min(n, slurm)
    if (quota := _cgroup_cpus()) is not None:
        n = min(n, quota)
    return max(1, n)


def current_nice() -> int:
    """This process's niceness (0 unless it was started under `nice`)."""
    return os.getpriority(os.PRIO_PROCESS, 0)


def undo_ray_nice(driver_nice: int = 0) -> int:
    """Ray starts its worker processes at nice 15 (its `worker_niceness`): beside busy
    processes at nice 0, a CPU worker then gets about 2% of a core (a 4 s run took 124 s beside
    two burners). Put this process at the driver's niceness instead, `driver_nice`: 0, unless
    the user started the driver under `nice` to lower the run's priority, which its workers
    then keep. Raising the niceness is always allowed; lowering it needs root, CAP_SYS_NICE or
    RLIMIT_NICE (elsewhere start Ray with RAY_worker_niceness=0). Returns the niceness now."""
    try:
        if current_nice() != driver_nice:
            os.setpriority(os.PRIO_PROCESS, 0, driver_nice)
    except OSError:  # not allowed: the caller reports it
        pass
    return current_nice()


def set_threads(requested: int = 0) -> int:
    """Set torch's intra-op threads: `requested`, or 0 for every available CPU. Returns it."""
    import torch

    threads = requested or available_cpus()
    torch.set_num_threads(threads)
    return threads
