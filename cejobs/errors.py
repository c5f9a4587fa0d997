"""Every error a user can cause, in one light module (it imports nothing).

Each message is one line saying what is wrong and how to fix it. The CLIs print it and exit
with status 2 (`cejobs.cli`); the Python API raises it as is, so a caller catches
`CejobsError` (or one of its kinds) without importing torch, zarr or ray.
"""

from __future__ import annotations


class CejobsError(Exception):
    """Base of every user-facing cejobs error; the message is one line."""


class ConfigError(CejobsError, ValueError):
    """A bad flag, TOML key or value; its message is one line saying how to fix it."""


class DatasetError(CejobsError):
    """A dataset that cannot be loaded; the message is one line saying why and how to fix it."""


class CheckpointError(CejobsError):
    """A checkpoint that cannot be used; the message is one line saying why."""


class StorageError(CejobsError, RuntimeError):
    """Object storage that can't be used as asked; the message is one line, with no secret."""


class StoreError(CejobsError, RuntimeError):
    """A store that can't be used as asked; the message is one line."""


class StoreWriteError(StoreError):
    """The storage refused a write (full, read-only, no permission): the run stops at once,
    finished shards keep their flags (cejobs.drivers.progress)."""


class TrainError(CejobsError):
    """A bad training setting or resume file; the message is one line."""
