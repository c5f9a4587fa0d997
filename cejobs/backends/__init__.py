"""Backends behind one interface (`base.Backend`); `make_backend` picks one by name.

The table names each backend's module and class; a backend's module (and its heavy imports:
torch, ray, submitit) is imported only when that backend is used. A new backend is a module
(or package) here with a class that has `from_config(resources)` and `run(task, shards,
on_result)`, and one line in BACKENDS.
"""

from __future__ import annotations

import importlib

from cejobs.backends.base import Backend, RunReport

BACKENDS = {
    "local": ("cejobs.backends.local", "LocalBackend"),
    "ray": ("cejobs.backends.ray", "RayBackend"),
    "slurm": ("cejobs.backends.slurm", "SlurmBackend"),
}


def make_backend(resources) -> Backend:
    """The backend named by `resources.backend`, built from the resource fields."""
    module, name = BACKENDS[resources.backend]
    return getattr(importlib.import_module(module), name).from_config(resources)


__all__ = ["BACKENDS", "Backend", "RunReport", "make_backend"]
