"""Backends behind one interface (`base.Backend`); `make_backend` picks one by name.

The table names each backend's module and class; a backend's module (and its heavy imports:
torch, ray, submitit) is imported only when that backend is used. A new backend is a module
(or package) here with a class that has `from_config(resources)` and `run(task, shards,
on_result)`, and one line in BACKENDS (and its name in cejobs.jobs.config.BACKENDS, the `--backend`
choices).
"""

from __future__ import annotations

import importlib

from cejobs.backends.base import Backend, RunReport
from cejobs.jobs.config import BACKENDS as BACKEND_NAMES

BACKENDS = {
    "local": ("cejobs.backends.local", "LocalBackend"),
    "ray": ("cejobs.backends.ray", "RayBackend"),
    "slurm": ("cejobs.backends.slurm", "SlurmBackend"),
}
assert tuple(BACKENDS) == BACKEND_NAMES, "a backend's name goes in cejobs.jobs.config too"


def make_backend(resources) -> Backend:
    """The backend named by `resources.backend`, built from the resource fields."""
    module, name = BACKENDS[resources.backend]
    return getattr(importlib.import_module(module), name).from_config(resources)


def make_ready_backend(resources) -> Backend:
    """The backend, after the checks that need no store, made before a store is touched: the
    device of a local run exists, and a backend's own `preflight()` (Ray: the given address
    answers within a bounded time)."""
    if resources.backend == "local":
        from cejobs.devices import resolve_device

        resolve_device(resources.device)
    backend = make_backend(resources)
    getattr(backend, "preflight", lambda: None)()
    return backend


__all__ = ["BACKENDS", "Backend", "RunReport", "make_backend", "make_ready_backend"]
