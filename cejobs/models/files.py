"""The files a model is built from, read from disk or from bytes read elsewhere.

A Ray driver reads every file of the model once and ships the bytes through Ray's object
store (jobs/worker_inputs.py); a worker then builds the model from those bytes, keyed by the
path the driver read them at, without touching its own disk. Elsewhere the files are read
where they are.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from cejobs.errors import CheckpointError


class ModelFiles:
    """is_file / read / is_dir over the local disk, or over `data` (str(path) -> bytes)."""

    def __init__(self, data: dict[str, bytes] | None = None):
        self.data = data

    def is_file(self, path: Path) -> bool:
        return str(path) in self.data if self.data is not None else Path(path).is_file()

    def is_dir(self, path: Path) -> bool:
        if self.data is None:
            return Path(path).is_dir()
        return any(Path(path) in Path(key).parents for key in self.data)

    def read(self, path: Path) -> bytes:
        if self.data is not None:
            if str(path) not in self.data:
                raise CheckpointError(f"model file {path} was not sent to this worker")
            return self.data[str(path)]
        try:
            return Path(path).read_bytes()
        except OSError as e:
            raise CheckpointError(f"model file not readable: {path} ({e.strerror or e})") from None


def combined_sha256(hashes: dict[str, str]) -> str:
    """One sha256 over (name, sha256) of every file a model is built from."""
    lines = "".join(f"{name} {sha}\n" for name, sha in sorted(hashes.items()))
    return hashlib.sha256(lines.encode()).hexdigest()


def sha256_of(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
