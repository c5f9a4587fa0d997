"""A store's storage in a folder of this machine's filesystem (local, or shared: NFS, Lustre).

A write goes to a temporary file renamed into place, a create is a hard link of a complete
temporary file (atomic, also on NFS; an O_EXCL create where hard links are missing), a move
is a rename, a heartbeat sets the mtime. The interface is `Storage` (cejobs/store/storage.py).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any

from cejobs.errors import StoreError
from cejobs.store.storage import Storage


class LocalStorage(Storage):
    """A folder on a filesystem of this machine (local or shared: NFS, Lustre, ...)."""

    shares_links = True
    folders_block_files = True

    def __init__(self, folder: str | os.PathLike):
        self.folder = Path(folder)
        self.local_folder = self.folder

    def __str__(self) -> str:
        return str(self.folder)

    @property
    def name(self) -> str:
        return self.folder.name

    @property
    def parent(self) -> LocalStorage:
        return LocalStorage(self.folder.parent)

    def resolve(self) -> LocalStorage:
        return LocalStorage(self.folder.resolve())

    def sub(self, key: str) -> LocalStorage:
        return LocalStorage(self._file(key))

    def _file(self, key: str) -> Path:
        return self.folder / key if key else self.folder

    def local_path(self, key: str) -> Path:
        return self._file(key)

    def _temporary(self, key: str) -> Path:
        path = self._file(key)
        return path.with_name(f".{path.name}.{uuid.uuid4().hex}.tmp")

    # ------------------------------------------------------------ keys
    def exists(self) -> bool:
        return self.folder.exists()

    def kind(self, key: str) -> str:
        path = self._file(key)
        if path.is_file():
            return "file"
        if path.is_dir():
            return "folder"
        return "other" if path.is_symlink() or path.exists() else "missing"

    def size(self, key: str) -> int:
        return self._file(key).stat().st_size

    def read(self, key: str) -> bytes:
        return self._file(key).read_bytes()

    def write(self, key: str, data: bytes) -> None:
        path = self._file(key)
        if self.kind(key) not in ("file", "missing"):
            self.remove(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temporary(key)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)

    def create(self, key: str, data: bytes) -> bool:
        path = self._file(key)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self._temporary(key)
        try:
            tmp.write_bytes(data)
            os.link(tmp, path)
            return True
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links: O_EXCL create, then write
            try:
                fd = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            return True
        finally:
            tmp.unlink(missing_ok=True)

    def move(self, key: str, to: str) -> bool:
        try:
            os.rename(self._file(key), self._file(to))
            return True
        except FileNotFoundError:
            return False

    def remove(self, key: str) -> None:
        path = self._file(key)
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)

    def remove_empty_folder(self, key: str) -> None:
        with contextlib.suppress(OSError):  # not empty (another process uses it), or gone
            self._file(key).rmdir()

    def touch(self, key: str) -> None:
        os.utime(self._file(key))

    def age(self, key: str) -> float | None:
        try:
            return time.time() - self._file(key).stat().st_mtime
        except FileNotFoundError:
            return None

    def names(self, key: str = "") -> list[str]:
        path = self._file(key)
        return sorted(child.name for child in path.iterdir()) if path.is_dir() else []

    def keys(self) -> list[str]:
        return sorted(path.relative_to(self.folder).as_posix()
                      for path in self.folder.rglob("*") if path.is_file())

    def leftovers(self, folder: str = "", startswith: str = "") -> list[tuple[str, float]]:
        base = self._file(folder)
        if not base.is_dir():
            return []
        found = base.glob(f"{startswith}*.partial") if startswith else base.rglob("*.partial")
        now, out = time.time(), []
        for path in sorted(found):
            try:
                out.append((path.relative_to(self.folder).as_posix(),
                            now - path.lstat().st_mtime))
            except FileNotFoundError:  # its writer renamed it meanwhile
                continue
        return out

    # ------------------------------------------------------------ stores
    def zarr_store(self, read_only: bool = False) -> Any:
        return str(self.folder)

    def check_writable(self) -> None:
        folder = self.folder if self.folder.is_dir() else self.folder.resolve().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
            probe = folder / f".cejobs-write-test-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as e:
            reason = e.strerror or str(e)
            blocker = next((p for p in (folder, *folder.parents)
                            if p.exists() and not p.is_dir()), None)
            if blocker is not None:  # mkdir says only "File exists" or "Not a directory"
                reason = f"{blocker} is a file, not a folder"
            raise StoreError(f"cannot write the store at {self}: {reason} (choose a writable "
                             f"--store on storage every worker shares)") from None

    def check_store_location(self) -> None:
        path = self.folder
        if path.is_symlink() and not path.exists():
            raise StoreError(f"--store {path} is a symbolic link to {os.readlink(path)}, which "
                             f"does not exist; create its target or choose another --store")
        if path.exists() and not path.is_dir():
            raise StoreError(f"--store {path} is a file, not a store folder; choose another "
                             f"--store")

    def create_tree(self, files: dict[str, bytes]) -> bool:
        """The tree is written in a sibling temporary folder, then renamed to the root."""
        tmp = self.folder.with_name(f".{self.folder.name}.{uuid.uuid4().hex}.creating")
        try:
            for key, data in files.items():
                (tmp / key).parent.mkdir(parents=True, exist_ok=True)
                (tmp / key).write_bytes(data)
            os.rename(tmp, self.folder)
            return True
        except OSError:
            if self.kind("zarr.json") == "missing":
                raise
            return False
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
