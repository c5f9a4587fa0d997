"""Backends behind one interface (`base.Backend`); `make_backend` picks one by name."""

from __future__ import annotations

from cejobs.backends.base import Backend, RunReport
from cejobs.backends.local import LocalBackend
from cejobs.backends.ray_backend import RayBackend
from cejobs.backends.slurm_backend import SlurmBackend

BACKENDS = {"local": LocalBackend, "ray": RayBackend, "slurm": SlurmBackend}


def make_backend(config) -> Backend:
    """The backend named by `config.backend`, built from the config's resource fields."""
    return BACKENDS[config.backend].from_config(config)


__all__ = ["BACKENDS", "Backend", "RunReport", "make_backend"]
