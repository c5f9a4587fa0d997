"""The API behaves in a notebook: messages only through `logging`, no command-line hints,
the caller's process state put back, one-line reprs, progress bars from `tqdm.auto`."""

from __future__ import annotations

import logging
import os

import pytest
import torch

import cejobs
from cejobs.drivers.api import open_store
from cejobs.store.store import CEStore


def api_fields(models, store) -> dict:
    return dict(backend="local", model=str(models["diffusion"]), sources=4, shard_size=2,
                steps=12, store=str(store), progress=False, threads=1)


@pytest.fixture
def notebook_logging(monkeypatch):
    """The `cejobs` logger as a fresh notebook has it: no handlers (a command run earlier in
    this test process configured some)."""
    monkeypatch.setattr(logging.getLogger("cejobs"), "handlers", [])


def test_generate_is_quiet_and_keeps_the_callers_process(tiny_models, tmp_path, capsys,
                                                          caplog, monkeypatch,
                                                          notebook_logging):
    torch.set_num_threads(2)
    monkeypatch.setenv("CEJOBS_TEST_UNTOUCHED", "yes")
    environ = dict(os.environ)
    caplog.set_level(logging.INFO, logger="cejobs")
    store = cejobs.generate(**api_fields(tiny_models, tmp_path / "q.zarr"))

    assert torch.get_num_threads() == 2  # the local backend ran with threads=1
    assert dict(os.environ) == environ
    assert capsys.readouterr() == ("", "")  # nothing printed, not even on stderr
    messages = [r.getMessage() for r in caplog.records]
    assert "2 of 2 shards to run on backend 'local' -> " + str(tmp_path / "q.zarr") in messages
    assert any(m.startswith("generated 80 CEs in 2 shards") for m in messages)
    assert not [m for m in messages if "python -m" in m]  # no command-line hints
    assert {r.name for r in caplog.records} <= {"cejobs.drivers.generate", "cejobs.output",
                                                "cejobs.backends.local"}

    assert repr(store) == f"CEStore({tmp_path / 'q.zarr'}: 2/2 shards done, method boltzmann)"
    data = open_store(tmp_path / "q.zarr")
    assert repr(data) == (f"StoreData({tmp_path / 'q.zarr'}: 2/2 shards done, method "
                          f"boltzmann; 80 CE rows)")


def test_kept_process_state_puts_back_only_what_the_call_changed(monkeypatch):
    from cejobs.drivers.api import kept_process_state
    from cejobs.threads import WAIT_VARIABLES

    monkeypatch.setenv("CEJOBS_TEST_CHANGED", "before")
    monkeypatch.delenv("CEJOBS_TEST_ADDED", raising=False)
    torch.set_num_threads(3)
    waits = {name: os.environ.get(name) for name in WAIT_VARIABLES}  # `import cejobs` set one
    with kept_process_state():
        torch.set_num_threads(1)
        os.environ["CEJOBS_TEST_CHANGED"] = "during"
        os.environ["CEJOBS_TEST_ADDED"] = "during"
    assert torch.get_num_threads() == 3
    assert os.environ["CEJOBS_TEST_CHANGED"] == "before"
    assert "CEJOBS_TEST_ADDED" not in os.environ
    assert {name: os.environ.get(name) for name in WAIT_VARIABLES} == waits  # it stays
    assert any(waits.values())


def test_progress_bar_is_tqdm_auto():
    import tqdm.auto

    from cejobs.drivers import progress

    assert progress.tqdm is tqdm.auto.tqdm
    bar = progress.Progress(3, enabled=False)
    assert bar.close() >= 0


@pytest.mark.parametrize("level", [logging.INFO, logging.WARNING])
def test_cli_logging_sends_results_to_stdout_and_notes_to_stderr(capsys, level):
    from cejobs.cli import configure_logging

    configure_logging()
    logging.getLogger("cejobs.output").log(level, "a result")
    logging.getLogger("cejobs.drivers.generate").log(level, "a note")
    assert capsys.readouterr() == ("a result\n", "a note\n")
