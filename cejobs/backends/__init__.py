"""Backends behind one interface (`base.Backend`); `make_backend` picks one by name.

The table names each backend's module and class; a backend's module (and its heavy imports:
torch, ray, submitit) is imported only when that backend is used. A new backend is a module
(or package) here with a class that implements `base.Backend` (`from_config(resources)`,
`preflight()`, `run(task, shards, on_result)`), and one line in BACKENDS (and its name in
cejobs.jobs.config.BACKENDS, the `--backend` choices).
"""

from __future__ import annotations

import importlib

from cejobs.backends.base import Backend, RunReport
from cejobs.errors import ConfigError
from cejobs.jobs.config import BACKENDS as BACKEND_NAMES, Resources

BACKENDS = {
    "local": ("cejobs.backends.local", "LocalBackend"),
    "ray": ("cejobs.backends.ray", "RayBackend"),
    "slurm": ("cejobs.backends.slurm", "SlurmBackend"),
}
assert tuple(BACKENDS) == BACKEND_NAMES, "a backend's name goes in cejobs.jobs.config too"

# The package each backend needs beyond the core install, and the extra that installs it
# (pyproject.toml).
NEEDS = {"ray": ("ray", "ray"), "slurm": ("submitit", "slurm")}


def require(package: str, extra: str, what: str) -> None:
    """A ConfigError naming the extra to install when `package` is missing."""
    try:
        importlib.import_module(package)
    except ModuleNotFoundError as e:
        if e.name != package:
            raise
        raise ConfigError(f"{what} needs {package}, which is not installed: "
                          f"pip install 'cejobs[{extra}]'") from None


def backend_class(name: str) -> type[Backend]:
    """The class of the backend `name` (its module is imported here); a ConfigError naming
    the extra to install when the backend's package is missing."""
    if name in NEEDS:
        require(*NEEDS[name], f"--backend {name}")
    module, cls = BACKENDS[name]
    return getattr(importlib.import_module(module), cls)


def make_backend(resources: Resources) -> Backend:
    """The backend named by `resources.backend`, built from the resource fields."""
    return backend_class(resources.backend).from_config(resources)


def make_ready_backend(resources: Resources) -> Backend:
    """The backend, after its `preflight()` checks, made before a store is touched (local: the
    device exists; Ray: the given address answers within a bounded time)."""
    backend = make_backend(resources)
    backend.preflight()
    return backend


__all__ = ["BACKENDS", "Backend", "RunReport", "backend_class", "make_backend",
           "make_ready_backend", "require"]
