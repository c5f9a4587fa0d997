"""The OpenMP runtime torch uses, found without importing torch, and the bounded-spin default
that `import cejobs` sets for it (cejobs/threads.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from cejobs import threads
from tests.conftest import REPO


def folder(root: Path, name: str, *files: str) -> Path:
    path = root / name
    path.mkdir()
    for file in files:
        (path / file).write_bytes(b"")
    return path


def clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in threads.WAIT_VARIABLES}
    return {**env, **extra}


def in_child(code: str, env: dict[str, str]) -> str:
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, text=True,
                       capture_output=True, check=True, timeout=120)
    return r.stdout.strip()


@pytest.mark.parametrize("files, runtime", [
    (["libgomp-a34b3233.so.1", "libtorch_cpu.so"], "libgomp"),  # Linux pip wheel
    (["libomp.dylib", "libtorch_cpu.dylib"], "libomp"),  # macOS wheel
    (["libiomp5md.dll", "torch_cpu.dll"], "libiomp5"),  # Windows wheel
    (["libiomp5.so", "libgomp.so.1"], "libiomp5"),  # Intel's runtime beside the GNU one
    (["libtorch_cpu.so"], None),
])
def test_runtime_is_named_from_the_library_files(tmp_path, files, runtime):
    assert threads.openmp_runtime([folder(tmp_path, "lib", *files)]) == runtime


def test_torch_own_folder_decides_before_the_environment_folder(tmp_path):
    torch_lib = folder(tmp_path, "torch-lib", "libgomp.so.1")
    env_lib = folder(tmp_path, "env-lib", "libiomp5.so")
    missing = tmp_path / "absent"
    assert threads.openmp_runtime([missing, torch_lib, env_lib]) == "libgomp"
    assert threads.openmp_runtime([missing, folder(tmp_path, "empty"), env_lib]) == "libiomp5"


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_the_named_runtime_is_the_one_torch_loads():
    """Checked against the libraries mapped into a process once torch is imported."""
    code = ("import torch, os; torch.ones(2).sum(); "
            "print(' '.join(sorted({os.path.basename(l.split()[-1]) for l in "
            "open('/proc/self/maps') if 'omp' in l.rsplit('/', 1)[-1]})))")
    loaded = in_child(code, clean_env()).split()
    named = threads.openmp_runtime()
    assert named is not None
    assert [name for name in loaded if name.startswith(named)], (named, loaded)


def test_the_runtime_knob_is_set_only_where_the_user_set_none(monkeypatch):
    for name in threads.WAIT_VARIABLES:  # set first, so that monkeypatch restores the original
        monkeypatch.setenv(name, "")
        monkeypatch.delenv(name)
    assert threads.openmp_wait_default("libomp") == ("KMP_BLOCKTIME", "0")
    assert os.environ["KMP_BLOCKTIME"] == "0" and "GOMP_SPINCOUNT" not in os.environ
    assert threads.openmp_wait() == "KMP_BLOCKTIME=0"
    monkeypatch.delenv("KMP_BLOCKTIME")
    assert threads.openmp_wait_default("libgomp") == ("GOMP_SPINCOUNT", "2000")
    monkeypatch.delenv("GOMP_SPINCOUNT")
    assert threads.openmp_wait_default("unknown") == ("OMP_WAIT_POLICY", "PASSIVE")
    for name in threads.WAIT_VARIABLES:  # the user's choice, whichever variable, stands
        monkeypatch.delenv(name, raising=False)
        monkeypatch.setenv(name, "7")
        assert threads.openmp_wait_default("libgomp") is None
        assert threads.openmp_wait() == f"{name}=7"
        monkeypatch.delenv(name)


def test_import_cejobs_sets_the_knob_of_torch_runtime_before_torch_loads():
    code = ("import os, sys, cejobs; assert 'torch' not in sys.modules; "
            "from cejobs.threads import openmp_wait; print(openmp_wait())")
    knob = threads.BOUNDED_WAIT.get(threads.openmp_runtime() or "", threads.UNKNOWN_RUNTIME_WAIT)
    assert in_child(code, clean_env()) == "=".join(knob)
    assert in_child(code, clean_env(OMP_WAIT_POLICY="ACTIVE")) == "OMP_WAIT_POLICY=ACTIVE"
