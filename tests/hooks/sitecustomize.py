"""Test-only shard gate, loaded by every Python process that has tests/hooks on PYTHONPATH.

When CEJOBS_TEST_GATE names a folder, each worker waits before running shard k until
`<folder>/open` or `<folder>/<k>` exists, and leaves `<folder>/waiting-<k>-<pid>` while it
waits.
Tests open the gate shard by shard, so what is done when they stop, kill or inspect a run
depends on what they allowed, never on how fast this machine is. The production code knows
nothing of it: the hook wraps the worker class when its module is first imported. Without the
variable it does nothing.

It also records every shard write (CEStore.write_shard): `<folder>/writes/<shard>-<pid>-<start
ns>` is made before the write and gets `-<end ns>` appended after it, so tests can check that
no shard was written by two workers at once (a write that never ended counts as running on).
"""

from __future__ import annotations

import importlib.abc
import importlib.util
import os
import sys
import time
from pathlib import Path

GATE_ENV = "CEJOBS_TEST_GATE"


def wait_at_gate(gate: Path, shard: int) -> None:
    marker = gate / f"waiting-{shard}-{os.getpid()}"
    try:
        while not ((gate / "open").exists() or (gate / str(shard)).exists()):
            marker.touch()
            time.sleep(0.05)
    finally:  # also when a stop signal interrupts the wait
        marker.unlink(missing_ok=True)


def _recorded(method):
    def write_shard(self, shard, *args, **kwargs):
        folder = Path(os.environ[GATE_ENV]) / "writes"
        folder.mkdir(exist_ok=True)
        started = folder / f"{int(shard)}-{os.getpid()}-{time.time_ns()}"
        started.touch()
        result = method(self, shard, *args, **kwargs)
        started.rename(f"{started}-{time.time_ns()}")
        return result
    return write_shard


def _gated(method):
    def run_shard(self, shard, *args, **kwargs):
        wait_at_gate(Path(os.environ[GATE_ENV]), int(shard))
        return method(self, shard, *args, **kwargs)
    return run_shard


# module: (class, method, wrapper)
TARGETS = {"cejobs.jobs.generate_worker": ("GenerateWorker", "run_shard", _gated),
           "cejobs.store.store": ("CEStore", "write_shard", _recorded)}


class _GateFinder(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name not in TARGETS:
            return None
        sys.meta_path.remove(self)
        try:
            spec = importlib.util.find_spec(name)
        finally:
            sys.meta_path.insert(0, self)
        if spec is None or spec.loader is None:
            return spec
        exec_module = spec.loader.exec_module
        cls_name, method_name, wrap = TARGETS[name]

        def exec_and_patch(module):
            exec_module(module)
            cls = getattr(module, cls_name)
            setattr(cls, method_name, wrap(getattr(cls, method_name)))

        spec.loader.exec_module = exec_and_patch
        return spec


if os.environ.get(GATE_ENV):
    sys.meta_path.insert(0, _GateFinder())
