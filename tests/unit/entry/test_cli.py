"""The command lines: light to import, bad input as one line and exit status 2, help intact."""

from __future__ import annotations

import subprocess
import sys

import pytest

from cejobs.cli import exit_status, generate_main, status_main
from cejobs.errors import StoreError
from tests.conftest import REPO

HEAVY = ("torch", "ray", "zarr")


@pytest.mark.parametrize("module", ["cejobs", "cejobs.cli"])
def test_import_loads_no_heavy_package(module):
    code = f"import sys, {module}; print([m for m in {HEAVY!r} if m in sys.modules])"
    r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True,
                       check=True)
    assert r.stdout.strip() == "[]"


def test_user_error_is_one_line_and_status_2(capsys, tmp_path):
    assert exit_status(status_main, ["--store", str(tmp_path / "none.zarr")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1

    def raises(argv):
        raise StoreError("the store is gone")

    assert exit_status(raises) == 2
    assert capsys.readouterr().err == "error: the store is gone\n"
    assert exit_status(generate_main, ["--sigma-ce", "-1"]) == 2
    assert capsys.readouterr().err == "error: --sigma-ce must be > 0 (got -1.0)\n"


@pytest.mark.parametrize("module", ["cejobs.generate", "cejobs.evaluate", "cejobs.status",
                                    "cejobs.train"])
def test_module_help(module):
    r = subprocess.run([sys.executable, "-m", module, "--help"], cwd=REPO, capture_output=True,
                       text=True)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m " + module), r.stderr
