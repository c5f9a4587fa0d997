"""CPU threads: how many a worker may use, and how idle OpenMP threads wait.

On a loaded machine (a shared login node, a SLURM node where a task has fewer CPUs than it
sees, CI) torch's OpenMP threads, left to their defaults, spin-wait for partners that are not
scheduled: two threads beside two busy processes took 4x the wall time and 11x the CPU of one
thread (docs/performance.md, "CPU threads under load"). Two rules prevent that:

- a worker uses at most the CPUs it may run on (affinity mask, SLURM_CPUS_PER_TASK, cgroup
  quota), never os.cpu_count();
- OpenMP threads wait passively (OMP_WAIT_POLICY=PASSIVE): the runtime reads it once, when
  torch loads it, so `cejobs/__init__.py` sets it before any cejobs module imports torch.
  A user's own setting wins.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

from cejobs.slurm_env import current_job

WAIT_POLICY = ("OMP_WAIT_POLICY", "PASSIVE")


def passive_openmp_default() -> None:
    """Make idle OpenMP threads sleep, unless the environment says otherwise (see above)."""
    os.environ.setdefault(*WAIT_POLICY)


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
