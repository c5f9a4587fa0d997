"""Where a store lives: a local folder, or a prefix in object storage (docs/store.md).

`location(text)` turns a `--store` value into a `pathlib.Path` (plain paths and `file://`) or
an `ObjectPath` (`s3://bucket/prefix/run.zarr`, or any other fsspec URL). `ObjectPath` offers
the few `Path` operations the drivers use (`/`, `name`, `parent`, `exists`, `resolve`), plus
`create(data)`, a write that succeeds only where no object is (S3's conditional PUT,
`If-None-Match: *`), and `zarr_store()` to open zarr on it. `ObjectKeys` is the store's key
I/O on objects (CEStore's key methods, for `ObjectCEStore`).

Endpoint and credentials come only from the standard environment and config files of the
filesystem (for S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ~/.aws/config),
never from flags; nothing here prints or stores them. s3fs was chosen over obstore by
measurement and for its reach (any fsspec URL, AWS profiles): docs/store.md.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable, Iterator

from cejobs.errors import StorageError

FS_OPTIONS = {"use_listings_cache": False}  # several processes write: never trust a listing




def is_url(text: str | os.PathLike) -> bool:
    """An fsspec URL other than file:// (those are local paths)."""
    return isinstance(text, ObjectPath) or ("://" in str(text)
                                            and not str(text).startswith("file://"))


def location(text: str | os.PathLike) -> Path | ObjectPath:
    """A `--store` value as a local Path or an ObjectPath (returned as is when already one)."""
    if isinstance(text, ObjectPath):
        return text
    if is_url(text):
        return ObjectPath(str(text))
    return Path(str(text).removeprefix("file://"))


def zarr_store(where: Path | ObjectPath, read_only: bool = False) -> Any:
    """What zarr opens: the folder's path, or a store over the object prefix."""
    return where.zarr_store(read_only) if isinstance(where, ObjectPath) else str(where)


class ObjectPath:
    """A key (or key prefix) in an fsspec filesystem, with the `Path` subset the store uses."""

    def __init__(self, url: str, _fs: Any = None, _key: str | None = None):
        import fsspec

        self.protocol = url.split("://", 1)[0]
        if _fs is None:
            try:
                _fs, _key = fsspec.core.url_to_fs(url, **FS_OPTIONS)
            except (ImportError, ValueError) as e:
                raise StorageError(f"cannot open {url}: {e} (s3:// needs pip install "
                                   f"'cejobs[s3]')") from None
        self.fs, self.key = _fs, str(_key).rstrip("/")

    # ------------------------------------------------------------ the Path subset
    def __str__(self) -> str:
        return f"{self.protocol}://{self.key}"

    def __repr__(self) -> str:
        return f"ObjectPath({str(self)!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ObjectPath) and str(other) == str(self)

    def __hash__(self) -> int:
        return hash(str(self))

    def __truediv__(self, part: str | os.PathLike) -> ObjectPath:
        key = f"{self.key}/{str(part).strip('/')}"
        return ObjectPath(f"{self.protocol}://{key}", self.fs, key)

    @property
    def name(self) -> str:
        return PurePosixPath(self.key).name

    @property
    def parent(self) -> ObjectPath:
        key = str(PurePosixPath(self.key).parent)
        return ObjectPath(f"{self.protocol}://{key}", self.fs, key)

    def resolve(self) -> ObjectPath:
        return self

    def exists(self) -> bool:
        """Whether an object (or a prefix) is there. The store's first call: an endpoint,
        bucket or credentials that don't work end here, in one line (StorageError)."""
        try:
            return bool(self.fs.exists(self.key))
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise StorageError(f"cannot use {self}: {explain(e)}") from None

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    # ------------------------------------------------------------ object storage only
    def create(self, data: bytes) -> bool:
        """Write `data` only where no object is: True if written, False if one was there.
        s3fs sends `If-None-Match: *`, so two writers racing end with one object; filesystems
        without conditional writes check, then write (docs/store.md)."""
        try:
            self.fs.pipe_file(self.key, data, mode="create")
        except FileExistsError:
            return False
        return True

    def zarr_store(self, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(str(self), storage_options=FS_OPTIONS, read_only=read_only)

    def check_writable(self) -> None:
        """Fail early, in one line, when the prefix can't be reached or written: a probe
        object, created and deleted, so nothing is left."""
        probe = self.parent / f".cejobs-write-test-{uuid.uuid4().hex}"
        try:
            probe.create(b"")
            probe.unlink(missing_ok=True)
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise StorageError(f"cannot write the store at {self}: {explain(e)}") from None


def explain(error: BaseException) -> str:
    """One line for a failed object-storage call: what is wrong, and where to fix it."""
    text = f"{type(error).__name__} {error}"
    if isinstance(error, FileNotFoundError) or "NoSuchBucket" in text:
        return "the bucket does not exist (create it, or fix the URL)"
    if isinstance(error, PermissionError) or any(
            code in text for code in ("InvalidAccessKeyId", "SignatureDoesNotMatch",
                                      "AccessDenied", "Unable to locate credentials",
                                      "NoCredentialsError", "ExpiredToken")):
        return ("the credentials were refused or are missing (set AWS_ACCESS_KEY_ID/"
                "AWS_SECRET_ACCESS_KEY or AWS_PROFILE)")
    if any(word in text for word in ("Could not connect", "Connect", "connect", "Timeout",
                                     "timed out", "Name or service")):
        endpoint = os.environ.get("AWS_ENDPOINT_URL") or "the default AWS endpoint"
        return f"cannot reach {endpoint} (check AWS_ENDPOINT_URL or the profile's endpoint_url)"
    return f"{type(error).__name__}: {str(error).splitlines()[0][:200] if str(error) else ''}"


def group_files(build: Callable[[Any], None]) -> dict[str, bytes]:
    """The objects of a zarr v3 group made by `build(group)` in memory: key -> bytes."""
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    memory = MemoryStore()
    build(zarr.open_group(memory, mode="w-", zarr_format=3))

    async def read_all() -> dict[str, bytes]:
        return {k: (await memory.get(k, default_buffer_prototype())).to_bytes()
                async for k in memory.list()}

    return sync(read_all())


def write_missing(where: ObjectPath, files: dict[str, bytes]) -> None:
    """Write each of `files` (key under `where` -> bytes) that is not there yet: the second
    step of creating a group on object storage, after its root (docs/store.md)."""
    for key, data in sorted(files.items()):
        if not (where / key).exists():
            (where / key).create(data)


class ObjectKeys:
    """CEStore's key methods (cejobs/store/store.py) on object storage, mixed into ObjectCEStore.

    Keys are objects below the store's prefix; a "folder" is a prefix with objects under it.
    A PUT is whole or absent, so writes need no temporary object, and there are no `*.partial`
    leftovers. `create_key` is a conditional PUT (If-None-Match); `move_key` is a copy, then
    a delete; `touch_key` rewrites the object (a new LastModified, which `key_age` reads)."""

    path: ObjectPath
    _listing: dict[str, dict] | None = None  # key -> info, during `listing()`
    _folders: set[str] = set()

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        """For a read-only pass over many keys (repair's check of every done shard's chunks):
        `key_kind` and `key_size` answer from one listing of the store (one LIST request per
        1,000 keys) instead of a HEAD request each. Any key write ends it."""
        found = self.path.fs.find(self.path.key, detail=True)
        self._listing = {str(PurePosixPath(k).relative_to(self.path.key)): info
                         for k, info in found.items()}
        self._folders = {str(p) for k in self._listing for p in PurePosixPath(k).parents}
        try:
            yield
        finally:
            self._listing = None

    def _obj(self, key: str) -> str:
        return (self.path / key).key

    def folder_checked(self, names: list[str]) -> list[str]:
        return []  # a prefix does not block an object: no HEAD request per chunk

    def _info(self, key: str) -> dict | None:
        if self._listing is not None:
            if key in self._listing:
                return self._listing[key]
            return {"type": "directory"} if key in self._folders else None
        try:
            return self.path.fs.info(self._obj(key))
        except FileNotFoundError:
            return None

    def key_kind(self, key: str) -> str:
        info = self._info(key)
        if info is None:
            return "missing"
        return "folder" if info.get("type") == "directory" else "file"

    def key_size(self, key: str) -> int:
        info = self._info(key)
        if info is None:
            raise FileNotFoundError(str(self.path / key))
        return int(info.get("size") or 0)

    def read_key(self, key: str) -> bytes:
        return bytes(self.path.fs.cat_file(self._obj(key)))

    def write_key(self, key: str, data: bytes) -> None:
        self._listing = None  # the store changes: live answers again
        self.path.fs.pipe_file(self._obj(key), data)

    def create_key(self, key: str, data: bytes) -> bool:
        self._listing = None  # the store changes: live answers again
        return (self.path / key).create(data)

    def move_key(self, key: str, to: str) -> bool:
        self._listing = None  # the store changes: live answers again
        try:
            self.path.fs.copy(self._obj(key), self._obj(to))
        except FileNotFoundError:
            return False
        self.remove_key(key)
        return True

    def remove_key(self, key: str) -> None:
        self._listing = None  # the store changes: live answers again
        fs, obj = self.path.fs, self._obj(key)
        try:
            if self.key_kind(key) == "folder":
                fs.rm(obj, recursive=True)
            else:
                fs.rm_file(obj)
        except FileNotFoundError:
            pass

    def remove_empty_folder(self, key: str) -> None:
        pass  # a prefix goes with its last object

    def touch_key(self, key: str) -> None:
        self.write_key(key, self.read_key(key))

    def key_age(self, key: str) -> float | None:
        info = self._info(key)
        if info is None or info.get("type") == "directory":
            return None
        modified = info.get("LastModified") or info.get("mtime")
        return time.time() - modified.timestamp() if modified is not None else 0.0

    def list_folder(self, key: str) -> list[str]:
        try:
            found = self.path.fs.ls(self._obj(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(PurePosixPath(k).name for k in found)

    def leftovers(self, folder: str = "", startswith: str = "") -> list[tuple[str, float]]:
        return []  # a PUT is atomic: no partial objects
