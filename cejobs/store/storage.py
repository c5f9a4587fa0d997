"""Where a store lives, and the only code that reads and writes it (docs/store.md, "Storage").

A `Storage` is a key-value view of one folder or object prefix; `location(text)`
(cejobs/store/location.py) makes one from a `--store` value. Keys are `/`-separated paths
below the root ("" is the root itself). Two kinds implement the same interface:

- `LocalStorage` (cejobs/store/local.py): a folder on a local or shared filesystem. A write goes to a
  temporary file renamed into place, a create is a hard link of a complete temporary file
  (atomic, also on NFS), a move is a rename.
- `ObjectStorage` (cejobs/store/objects.py): a prefix in object storage. A PUT is whole or
  absent, a create is a conditional PUT (`If-None-Match: *`), a move is a copy, then a delete.

What differs between them and matters to callers is said by properties (`local_folder`,
`shares_links`, `folders_block_files`), never by the class of the object.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, Iterator

from cejobs.errors import StoreError


class Storage(ABC):
    """A folder or an object prefix seen as keys; see the module doc. Every method that takes
    a key is relative to this storage's root."""

    local_folder: Path | None = None  # the folder, when the storage is one on this machine
    shares_links: bool = False  # hard links and renames are atomic (SLURM's claims need it)
    folders_block_files: bool = False  # a folder where a file belongs stops its write

    # ------------------------------------------------------------ naming
    @abstractmethod
    def __str__(self) -> str:
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash((type(self).__name__, str(self)))

    @property
    @abstractmethod
    def name(self) -> str:
        """The last part of the location (a store's folder name, e.g. `run.zarr`)."""
        raise NotImplementedError

    @property
    @abstractmethod
    def parent(self) -> Storage:
        raise NotImplementedError

    def resolve(self) -> Storage:
        """The same location, absolute (a local folder's symbolic links resolved)."""
        return self

    @abstractmethod
    def sub(self, key: str) -> Storage:
        """The storage rooted at `key` below this one."""
        raise NotImplementedError

    # ------------------------------------------------------------ keys
    @abstractmethod
    def exists(self) -> bool:
        """Whether anything is at the root."""
        raise NotImplementedError

    @abstractmethod
    def kind(self, key: str) -> str:
        """"file", "missing", "folder" or "other" (a socket, a dangling link, ...)."""
        raise NotImplementedError

    @abstractmethod
    def size(self, key: str) -> int:
        raise NotImplementedError

    @abstractmethod
    def read(self, key: str) -> bytes:
        raise NotImplementedError

    @abstractmethod
    def write(self, key: str, data: bytes) -> None:
        """Write `key` whole or not at all (a folder in its place is removed first)."""
        raise NotImplementedError

    @abstractmethod
    def create(self, key: str, data: bytes) -> bool:
        """Create `key` with `data` unless it exists, atomically: whether this call made it
        (of two processes racing, exactly one does)."""
        raise NotImplementedError

    @abstractmethod
    def move(self, key: str, to: str) -> bool:
        """Move `key` to `to`; False when `key` is already gone (another process moved it)."""
        raise NotImplementedError

    @abstractmethod
    def remove(self, key: str) -> None:
        """Remove a file, or a folder and everything under it; nothing if it is gone."""
        raise NotImplementedError

    def remove_empty_folder(self, key: str) -> None:
        """Remove the folder `key` if it is empty (an object prefix goes with its last key)."""

    @abstractmethod
    def touch(self, key: str) -> None:
        """Make `key` young again (a heartbeat): `age` restarts from zero."""
        raise NotImplementedError

    @abstractmethod
    def age(self, key: str) -> float | None:
        """Seconds since `key` was last written or touched; None when it is missing."""
        raise NotImplementedError

    @abstractmethod
    def names(self, key: str = "") -> list[str]:
        """Names directly under the folder `key`, sorted (none when it is not a folder)."""
        raise NotImplementedError

    @abstractmethod
    def keys(self) -> list[str]:
        """Every file key below the root, sorted."""
        raise NotImplementedError

    def leftovers(self, folder: str = "", startswith: str = "") -> list[tuple[str, float]]:
        """(key, age in seconds) of every `*.partial` file zarr left under `folder`
        (recursively when `startswith` is empty; else only those directly in it whose name
        starts with it). A PUT is whole or absent: object storage has none."""
        return []

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        """A read-only pass over many keys: object storage answers `kind` and `size` from one
        listing instead of a request each; a folder needs nothing."""
        yield

    # ------------------------------------------------------------ stores
    @abstractmethod
    def zarr_store(self, read_only: bool = False) -> Any:
        """What zarr opens for the group at the root."""
        raise NotImplementedError

    def local_path(self, key: str) -> Path:
        """The file of `key` on this machine (for tests and tools that need a file)."""
        raise StoreError(f"{self} is in object storage: its keys are not local files")

    @abstractmethod
    def check_writable(self) -> None:
        """Fail early, in one line, when the root (or the folder it would be made in) can't be
        written, or an object store's endpoint, bucket or credentials fail."""
        raise NotImplementedError

    def check_store_location(self) -> None:
        """Refuse, in one line, a root that can't be a store (a file, a dangling link)."""

    @abstractmethod
    def create_tree(self, files: dict[str, bytes]) -> bool:
        """Make the tree `files` (key -> bytes) at the root, whole or not at all as far as
        readers can tell; False when a root `zarr.json` was there first (theirs stays)."""
        raise NotImplementedError

    def finish_tree(self, files: dict[str, bytes]) -> None:
        """Write what `create_tree` left to write after its caller checked that the tree is
        its own: each of `files` that is missing."""
