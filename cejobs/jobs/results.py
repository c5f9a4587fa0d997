"""What a worker returns for a shard, and the safe shard call that turns any failure into a
failed result (the driver reports it; the shard is not marked done)."""

from __future__ import annotations

import traceback
from dataclasses import dataclass

from cejobs.errors import StoreWriteError
from cejobs.hosts import worker_name


class ShardError(RuntimeError):
    """A shard that computed but must not be marked done (e.g. non-finite CEs)."""


@dataclass
class ShardResult:
    shard: int
    ces: int = 0
    seconds: float = 0.0
    write_seconds: float = 0.0
    error: str | None = None
    worker: str = ""
    fatal: bool = False  # the storage refused a write (full, read-only): the run stops

    @property
    def ok(self) -> bool:
        return self.error is None


def run_shard_safely(worker, shard: int) -> ShardResult:
    """worker.run_shard, with any exception turned into a failed result carrying its traceback."""
    try:
        return worker.run_shard(shard)
    except StoreWriteError as e:  # one line; the driver stops the run (cejobs.drivers.progress)
        return ShardResult(shard, error=str(e), worker=worker_name(), fatal=True)
    except ShardError as e:  # an explained failure: its line says it all
        return ShardResult(shard, error=f"ShardError: {e}", worker=worker_name())
    except Exception as e:  # reported to the driver; the shard is not marked done
        tb = traceback.format_exc(limit=4)
        return ShardResult(shard, error=f"{type(e).__name__}: {e}\n{tb}", worker=worker_name())
