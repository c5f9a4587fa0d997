"""`--store` values as storage: the one place a user's string becomes a `Storage`.

`location(text)` takes a path, `file://...`, `s3://bucket/prefix/run.zarr` or any other
fsspec URL. It is called where a user's string enters (the CLIs, the config's checks, a worker
given the store's URL); all code after it takes the `Storage`.
"""

from __future__ import annotations

import os
from pathlib import Path

from cejobs.store.objects import ObjectStorage
from cejobs.store.local import LocalStorage
from cejobs.store.storage import Storage


def location(text: str | os.PathLike | Storage) -> Storage:
    """A `--store` value as a Storage (returned as is when it already is one). Nothing is
    contacted here: an object store's endpoint is first used by the first read or write."""
    if isinstance(text, Storage):
        return text
    value = str(text)
    if "://" in value and not value.startswith("file://"):
        return ObjectStorage(value)
    return LocalStorage(Path(value.removeprefix("file://")))
