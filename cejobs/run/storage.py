"""Where a store lives: a local folder, or a prefix in object storage (docs/store.md).

`location(text)` turns a `--store` value into a `pathlib.Path` (plain paths and `file://`) or
an `ObjectPath` (`s3://bucket/prefix/run.zarr`, or any other fsspec URL). `ObjectPath` offers
the few `Path` operations the store uses (`/`, `name`, `parent`, `exists`, `read_bytes`, ...),
plus `create(data)`, a write that succeeds only where no object is (S3's conditional PUT,
`If-None-Match: *`), and `zarr_store()` to open zarr on it.

Endpoint and credentials come only from the standard environment and config files of the
filesystem (for S3: `AWS_ENDPOINT_URL`, `AWS_ACCESS_KEY_ID`, `AWS_PROFILE`, ~/.aws/config),
never from flags; nothing here prints or stores them. s3fs was chosen over obstore by
measurement and for its reach (any fsspec URL, AWS profiles): docs/store.md.
"""

from __future__ import annotations

import os
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, Callable

FS_OPTIONS = {"use_listings_cache": False}  # several processes write: never trust a listing


class StorageError(RuntimeError):
    """Object storage that can't be used as asked; the message is one line, with no secret."""


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

    def relative_to(self, other: ObjectPath) -> PurePosixPath:
        return PurePosixPath(self.key).relative_to(other.key)

    def exists(self) -> bool:
        """Whether an object (or a prefix) is there. The store's first call: an endpoint,
        bucket or credentials that don't work end here, in one line (StorageError)."""
        try:
            return bool(self.fs.exists(self.key))
        except Exception as e:  # noqa: BLE001 - every failure becomes one line
            raise StorageError(f"cannot use {self}: {explain(e)}") from None

    def is_dir(self) -> bool:
        return bool(self.fs.isdir(self.key))

    def iterdir(self) -> list[ObjectPath]:
        return [self / PurePosixPath(k).name for k in self.fs.ls(self.key, detail=False)]

    def read_bytes(self) -> bytes:
        return bytes(self.fs.cat_file(self.key))

    def write_bytes(self, data: bytes) -> None:
        self.fs.pipe_file(self.key, data)

    def unlink(self, missing_ok: bool = False) -> None:
        try:
            self.fs.rm_file(self.key)
        except FileNotFoundError:
            if not missing_ok:
                raise

    def glob(self, pattern: str) -> list[ObjectPath]:
        return []  # a PUT is atomic: object storage has no partial files to look for

    def rglob(self, pattern: str) -> list[ObjectPath]:
        return []

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


def keys_under(where: Path | ObjectPath) -> set[str]:
    """Every file (object) below `where`, as keys relative to it: one listing (S3: one
    request per 1,000 keys), where asking for each chunk would cost one request per chunk."""
    if isinstance(where, ObjectPath):
        return {str(PurePosixPath(k).relative_to(where.key))
                for k in where.fs.find(where.key)}
    return {str(p.relative_to(where)) for p in where.rglob("*") if p.is_file()}


def publish(where: ObjectPath, build: Callable[[Any], None], root_only: bool) -> bool:
    """Write a zarr group built by `build(group)` to `where`, object by object.

    Its zarr.json (which holds the attributes that say what the store is) is the commit point:
    with `root_only`, only it is written, and only where none is (`create`), so two drivers
    racing on one URL end with one store and the loser writes nothing; it returns whether
    this call wrote it. Without `root_only`, every other object (group and array metadata,
    the same bytes for every driver whose configuration matched the store) is written where
    it is missing: the creator's second step, and the repair when a creator died between the
    two.
    """
    import zarr
    from zarr.core.buffer import default_buffer_prototype
    from zarr.core.sync import sync
    from zarr.storage import MemoryStore

    memory = MemoryStore()
    build(zarr.open_group(memory, mode="w-", zarr_format=3))
    keys = sorted(sync(_list(memory)))
    files = {k: sync(memory.get(k, default_buffer_prototype())).to_bytes() for k in keys}
    if root_only:
        return (where / "zarr.json").create(files["zarr.json"])
    for key, data in files.items():
        if key != "zarr.json" and not (where / key).exists():
            (where / key).create(data)
    return False


async def _list(store: Any) -> list[str]:
    return [key async for key in store.list()]
