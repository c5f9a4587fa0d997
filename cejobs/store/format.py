"""The store format: its version, its codecs and write settings, and its error for a write the
storage refuses (public contract: docs/store.md).

Every chunk ends with a crc32c checksum (cejobs-store-v2), so a changed byte is detected; zarr
>= 3.1.3 writes a chunk to `<key>.<uuid>.partial` and renames it into place, so a chunk is
whole or absent.
"""

from __future__ import annotations

import errno

from zarr.codecs import Crc32cCodec, ZstdCodec

from cejobs.errors import StoreWriteError

STORE_FORMAT = "cejobs-store-v2"  # v2: crc32c on every chunk, metadata copies, sources_sha256
OLD_FORMATS = ("cejobs-store-v1",)  # still opened: status, verify (decode only), evaluate
V2_IDENTITY = ("sources_sha256",)  # identity fields a v1 store did not record
ATTRS_KEY = "cejobs"
SHARD_FIELDS = ("started_at", "write_seconds", "finished_at", "done")
WRITE_CONFIG = {"write_empty_chunks": True}  # every chunk of a done shard exists on disk
# zstd, then a crc32c of the compressed bytes: any changed byte fails the read
# (cost on a CIFAR-sized shard: docs/performance.md, "Checksums")
COMPRESSORS = (ZstdCodec(level=0), Crc32cCodec())
LEFTOVER_AGE_S = 600.0  # a `*.partial` younger than this may be a live writer's: kept
STOP_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM)


def write_error(where: object, e: OSError) -> StoreWriteError:
    """One line for a write the storage refused (full, read-only, no permission)."""
    reason = e.strerror or str(e)
    return StoreWriteError(f"cannot write the store at {where}: {reason} (finished shards stay "
                           f"done; fix the storage, then run the same command to resume)")
