"""A store's storage in object storage: a key prefix of an fsspec filesystem (docs/store.md).

Keys are objects below the prefix; a "folder" is a prefix with objects under it. A PUT is
whole or absent, so writes need no temporary object, and there are no `*.partial` leftovers.
`create` is a conditional PUT (If-None-Match); `move` is a copy, then a delete; `touch`
rewrites the object (a new LastModified, which `age` reads).

Endpoint and credentials come only from the standard environment and config files of the
filesystem (for S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ~/.aws/config),
never from flags; nothing here prints or stores them. s3fs was chosen over obstore by
measurement and for its reach (any fsspec URL, AWS profiles): docs/store.md.
"""

from __future__ import annotations

import contextlib
import functools
import os
import time
import uuid
from pathlib import PurePosixPath
from typing import Any, Callable, Iterator, TypeVar

from cejobs.errors import StorageError
from cejobs.store.storage import Storage

FS_OPTIONS = {"use_listings_cache": False}  # several processes write: never trust a listing
Call = TypeVar("Call", bound=Callable[..., Any])
MEANINGFUL = (FileNotFoundError, FileExistsError, StorageError)  # answers, not failures


def one_line_failures(method: Call) -> Call:
    """A read, list or open of the storage whose endpoint can't be reached, or whose bucket or
    credentials are refused, raises StorageError with one line (`explain`) instead of the
    client's traceback; a missing key stays FileNotFoundError (an answer)."""
    @functools.wraps(method)
    def call(self: ObjectStorage, *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except MEANINGFUL:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise StorageError(f"cannot read {self}: {explain(e)}") from None
    return call  # type: ignore[return-value]


class ObjectStorage(Storage):
    """A prefix in object storage (s3://, any fsspec URL); see the module doc."""

    def __init__(self, url: str, fs: Any = None):
        self.protocol, _, rest = url.partition("://")
        self.prefix = rest.rstrip("/")
        self._fs = fs  # opened on first use: location() contacts nothing
        self._listing: dict[str, dict] | None = None  # key -> info, during `listing()`
        self._folders: set[str] = set()

    @property
    def fs(self) -> Any:
        if self._fs is None:
            try:  # fsspec names the missing package (s3fs) in an ImportError
                import fsspec

                self._fs = fsspec.core.url_to_fs(str(self), **FS_OPTIONS)[0]
            except (ImportError, ValueError) as e:
                raise StorageError(f"cannot open {self}: {e} (s3:// needs pip install "
                                   f"'cejobs[s3]')") from None
        return self._fs

    # ------------------------------------------------------------ naming
    def __str__(self) -> str:
        return f"{self.protocol}://{self.prefix}"

    @property
    def name(self) -> str:
        return PurePosixPath(self.prefix).name

    @property
    def parent(self) -> ObjectStorage:
        return ObjectStorage(f"{self.protocol}://{PurePosixPath(self.prefix).parent}", self._fs)

    def sub(self, key: str) -> ObjectStorage:
        return ObjectStorage(f"{self}/{key.strip('/')}", self._fs) if key else self

    def _object(self, key: str) -> str:
        return f"{self.prefix}/{key.strip('/')}" if key else self.prefix

    # ------------------------------------------------------------ keys
    def exists(self) -> bool:
        """The store's first call: an endpoint, bucket or credentials that don't work end
        here, in one line (StorageError)."""
        try:
            return bool(self.fs.exists(self.prefix))
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise StorageError(f"cannot use {self}: {explain(e)}") from None

    @contextlib.contextmanager
    def listing(self) -> Iterator[None]:
        """`kind` and `size` answer from one listing of the prefix (one LIST request per
        1,000 keys) instead of a HEAD request each. Any write ends it."""
        found = self._find_detail()
        self._listing = {str(PurePosixPath(k).relative_to(self.prefix)): info
                         for k, info in found.items()}
        self._folders = {str(p) for k in self._listing for p in PurePosixPath(k).parents}
        try:
            yield
        finally:
            self._listing = None

    @one_line_failures
    def _find_detail(self) -> dict[str, dict]:
        return self.fs.find(self.prefix, detail=True)

    @one_line_failures
    def _info(self, key: str) -> dict | None:
        if self._listing is not None:
            if key in self._listing:
                return self._listing[key]
            return {"type": "directory"} if key in self._folders else None
        try:
            return self.fs.info(self._object(key))
        except FileNotFoundError:
            return None

    def kind(self, key: str) -> str:
        info = self._info(key)
        if info is None:
            return "missing"
        return "folder" if info.get("type") == "directory" else "file"

    def size(self, key: str) -> int:
        info = self._info(key)
        if info is None:
            raise FileNotFoundError(f"{self}/{key}")
        return int(info.get("size") or 0)

    @one_line_failures
    def read(self, key: str) -> bytes:
        return bytes(self.fs.cat_file(self._object(key)))

    def write(self, key: str, data: bytes) -> None:
        self._listing = None  # the store changes: live answers again
        self.fs.pipe_file(self._object(key), data)

    def create(self, key: str, data: bytes) -> bool:
        """s3fs sends `If-None-Match: *`, so two writers racing end with one object;
        filesystems without conditional writes check, then write (docs/store.md)."""
        self._listing = None
        try:
            self.fs.pipe_file(self._object(key), data, mode="create")
        except FileExistsError:
            return False
        return True

    def move(self, key: str, to: str) -> bool:
        self._listing = None
        try:
            self.fs.copy(self._object(key), self._object(to))
        except FileNotFoundError:
            return False
        self.remove(key)
        return True

    def remove(self, key: str) -> None:
        self._listing = None
        try:
            if self.kind(key) == "folder":
                self.fs.rm(self._object(key), recursive=True)
            else:
                self.fs.rm_file(self._object(key))
        except FileNotFoundError:
            pass

    def touch(self, key: str) -> None:
        self.write(key, bytes(self.fs.cat_file(self._object(key))))  # OSError as writes do

    def age(self, key: str) -> float | None:
        info = self._info(key)
        if info is None or info.get("type") == "directory":
            return None
        modified = info.get("LastModified") or info.get("mtime")
        return time.time() - modified.timestamp() if modified is not None else 0.0

    @one_line_failures
    def names(self, key: str = "") -> list[str]:
        try:
            found = self.fs.ls(self._object(key), detail=False)
        except FileNotFoundError:
            return []
        return sorted(PurePosixPath(k).name for k in found)

    @one_line_failures
    def keys(self) -> list[str]:
        try:
            found = self.fs.find(self.prefix)
        except FileNotFoundError:
            return []
        return sorted(str(PurePosixPath(k).relative_to(self.prefix)) for k in found)

    # ------------------------------------------------------------ stores
    def zarr_store(self, read_only: bool = False) -> Any:
        from zarr.storage import FsspecStore

        return FsspecStore.from_url(str(self), storage_options=FS_OPTIONS, read_only=read_only)

    def check_writable(self) -> None:
        """A probe object beside the root, created and deleted, so nothing is left."""
        probe = f".cejobs-write-test-{uuid.uuid4().hex}"
        try:
            self.parent.create(probe, b"")
            self.parent.remove(probe)
        except StorageError:
            raise
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise StorageError(f"cannot write the store at {self}: {explain(e)}") from None

    def create_tree(self, files: dict[str, bytes]) -> bool:
        """Only the root `zarr.json` is written here, with a conditional PUT: of two creators,
        one wins. The other objects follow in `finish_tree`, once the caller has checked that
        the store is its own (also where a creator died early)."""
        return self.create("zarr.json", files["zarr.json"])

    def finish_tree(self, files: dict[str, bytes]) -> None:
        for key, data in sorted(files.items()):
            if self.kind(key) == "missing":
                self.create(key, data)


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
