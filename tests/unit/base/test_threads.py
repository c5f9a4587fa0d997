"""CPU thread defaults (cejobs/threads.py): the CPUs a worker may use, and bounded OpenMP waits."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from cejobs import threads
from tests.conftest import REPO


def in_child(code: str, env: dict | None = None, prefix: list[str] | None = None) -> str:
    """Run `code` in a fresh interpreter (OpenMP settings are fixed once torch loads)."""
    full = {k: v for k, v in os.environ.items()
            if k not in (*threads.WAIT_VARIABLES, "SLURM_CPUS_PER_TASK")}
    r = subprocess.run([*(prefix or []), sys.executable, "-c", code], cwd=REPO, text=True,
                       capture_output=True, env={**full, **(env or {})}, check=True, timeout=120)
    return r.stdout.strip()


def test_slurm_cpus_per_task_caps_the_threads(monkeypatch):
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "1")
    assert threads.available_cpus() == 1
    monkeypatch.setenv("SLURM_CPUS_PER_TASK", "100000")  # never more than the affinity mask
    assert threads.available_cpus() == len(os.sched_getaffinity(0))


def test_cgroup_quota_is_read(tmp_path):
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert threads._cgroup_cpus(tmp_path) == 2  # 1.5 CPUs of quota: 2 threads, rounded up
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert threads._cgroup_cpus(tmp_path) is None
    assert threads._cgroup_cpus(tmp_path / "absent") is None


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="needs Linux affinity")
def test_affinity_mask_sets_the_default_and_torch_follows():
    first = min(os.sched_getaffinity(0))
    code = ("import os; os.sched_setaffinity(0, {%d}); from cejobs.threads import set_threads; "
            "import torch; print(set_threads(), torch.get_num_threads())" % first)
    assert in_child(code) == "1 1"


def test_openmp_spin_is_bounded_unless_the_user_says_otherwise():
    code = "import os, cejobs, torch; print(os.environ.get('GOMP_SPINCOUNT'))"
    expected = "2000" if threads.openmp_runtime() == "libgomp" else "None"
    assert in_child(code) == expected
    assert in_child(code, env={"OMP_WAIT_POLICY": "ACTIVE"}) == "None"


def test_ray_worker_nice_is_undone_where_allowed():
    """Ray starts workers at nice 15; a worker puts itself back at 0 when it may (root here, in
    CI), and otherwise reports 15 without failing (the driver then prints how to fix it)."""
    code = ("import os; os.nice(15); from cejobs.threads import undo_ray_nice; "
            "print(undo_ray_nice())")
    assert in_child(code) == ("0" if os.geteuid() == 0 else "15")


def test_ray_worker_takes_the_drivers_niceness():
    """A driver started under `nice -n 10`: its workers, started by Ray at 15 (or at 0 by a
    Ray configured so), take 10: from 0 always (lowering a priority), from 15 where a
    priority may be raised (root here, in CI)."""
    for start in (15, 0):
        code = (f"import os; os.nice({start}); from cejobs.threads import undo_ray_nice; "
                f"print(undo_ray_nice(10))")
        assert in_child(code) == ("10" if start == 0 or os.geteuid() == 0 else "15")
