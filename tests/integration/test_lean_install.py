"""The core install (no extras): with ray, submitit and s3fs hidden from imports, a local
generate runs, and choosing what needs an extra says which one in one line."""

from __future__ import annotations

import subprocess
import sys

from cejobs.store.store import CEStore
from tests.conftest import REPO

HIDDEN = ("ray", "submitit", "s3fs")
# Run a module as `python -m` would, with the extras' packages unimportable.
RUN_WITHOUT_EXTRAS = f"""
import importlib.abc, runpy, sys
class Hide(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {HIDDEN!r}:
            raise ModuleNotFoundError(f"No module named {{name!r}}", name=name)
sys.meta_path.insert(0, Hide())
sys.argv = [sys.argv[1], *sys.argv[2:]]
runpy.run_module(sys.argv[0], run_name="__main__", alter_sys=True)
"""


def without_extras(module: str, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", RUN_WITHOUT_EXTRAS, module, *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=300)


def test_local_generate_needs_no_extra(tiny_models, tmp_path):
    store = tmp_path / "run.zarr"
    r = without_extras("cejobs.generate", "--backend", "local", "--device", "cpu",
                       "--model", str(tiny_models["diffusion"]), "--sources", "2",
                       "--per-class", "1", "--steps", "2", "--shard-size", "1", "--threads", "1",
                       "--no-progress", "--store", str(store))
    assert r.returncode == 0, r.stderr
    made = CEStore.open(store)
    assert made.num_shards == 2 and bool(made.done().all())


def test_each_extra_named_when_missing(tmp_path):
    r = without_extras("cejobs.generate", "--backend", "ray", "--store", str(tmp_path / "r"))
    assert (r.returncode, r.stderr) == (2, "error: --backend ray needs ray, which is not "
                                           "installed: pip install 'cejobs[ray]'\n")
    assert not (tmp_path / "r").exists()
    r = without_extras("cejobs.evaluate", "--backend", "slurm", "--store", str(tmp_path / "s"))
    assert (r.returncode, r.stderr) == (2, "error: --backend slurm needs submitit, which is "
                                           "not installed: pip install 'cejobs[slurm]'\n")
    r = without_extras("cejobs.status", "--store", "s3://bucket/run.zarr")
    assert r.returncode == 2 and r.stderr.count("\n") == 1
    assert r.stderr.startswith("error: ") and "pip install 'cejobs[s3]'" in r.stderr


def test_extras_of_the_package():
    import re
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]

    def names(requirements):
        return {re.match(r"[A-Za-z0-9_.-]+", r)[0] for r in requirements}

    extras = {k: names(v) for k, v in project["optional-dependencies"].items()}
    core = names(project["dependencies"])
    assert not core & {"ray", "submitit", "s3fs", "fsspec", "diffusers", "timm", "moto"}
    assert (extras["ray"], extras["slurm"], extras["s3"]) == ({"ray"}, {"submitit"}, {"s3fs"})
    assert extras["models"] == {"diffusers", "timm", "safetensors"}
    assert project["optional-dependencies"]["all"] == ["cejobs[ray,slurm,s3,models]"]
    assert "cejobs[all]" in project["optional-dependencies"]["dev"]
    every = [r for v in project["optional-dependencies"].values() for r in v]
    assert sum(name == "s3fs" for r in every for name in names([r])) == 1
