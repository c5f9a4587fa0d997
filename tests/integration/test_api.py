"""The Python API: the README's example runs as written, and gives what the CLIs give."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd

from cejobs.store.store import CEStore
from tests.conftest import REPO, run_module


def _readme_example() -> str:
    text = (REPO / "README.md").read_text()
    section = text[text.index("## Python API"):]
    return re.search(r"```python\n(.*?)```", section, re.S)[1]


def test_readme_example_runs_and_equals_the_cli(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md", "exec"), namespace)
    store, data, tables = namespace["store"], namespace["data"], namespace["tables"]

    assert isinstance(store, CEStore) and store.done().tolist() == [True, True]
    # the same flags through the CLI give the same bytes
    run_module("cejobs.generate", "--sources", "8", "--per-class", "1", "--steps", "50",
               "--shard-size", "4", "--backend", "local", "--no-progress",
               "--store", tmp_path / "cli.zarr")
    cli = CEStore.open(tmp_path / "cli.zarr")
    for name in ("ce/x", "ce/target", "ce/l2", "source/index"):
        np.testing.assert_array_equal(store.read_rows(name), cli.read_rows(name), err_msg=name)

    # labelled data: xarray with the store's dimension names, pandas one row per CE
    assert data.tree["ce"]["x"].dims == ("source", "ce", "channel", "height", "width")
    ces = data.ces
    assert len(ces) == 8 * 10 and ces["target"].tolist() == list(range(10)) * 8
    np.testing.assert_array_equal(ces["l2"].to_numpy(), cli.read_rows("ce/l2").reshape(-1))
    assert ces["source_index"].tolist() == np.repeat(np.arange(8), 10).tolist()
    assert set(data.distances["distance"]) == {"l2", "l0"}

    # evaluate: the tables of tables/*.csv, equal to the files it wrote
    out = tmp_path / "runs" / "api-demo.eval"
    for name, table in tables.items():
        written = pd.read_csv(out / "tables" / f"{name}.csv")
        pd.testing.assert_frame_equal(table.reset_index(drop=True), written,
                                      check_dtype=False, check_exact=False)
    assert sorted(tables["accuracy"]["classifier"]) == ["l2-eps0.25", "l2-eps0.5", "l2-eps1.0",
                                                         "standard"]
    from cejobs.drivers.api import open_store

    after = open_store(tmp_path / "runs" / "api-demo.zarr").ces  # now with eval probabilities
    probs = after[[c for c in after.columns if c.startswith("p_target_")]]
    assert probs.shape == (80, 4) and np.isfinite(probs.to_numpy()).all()


def test_console_scripts_are_the_cli_mains():
    import importlib
    import subprocess
    import sys
    import tomllib

    scripts = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"cejobs-generate", "cejobs-evaluate", "cejobs-status", "cejobs-train"}
    for name, target in scripts.items():
        module, function = target.split(":")
        assert callable(getattr(importlib.import_module(module), function)), name
        code = (f"import sys; sys.argv = [{name!r}, '--help']; "
                f"from {module} import {function}; {function}()")
        r = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                           text=True)
        assert r.returncode == 0 and "usage:" in r.stdout, (name, r.stderr)
