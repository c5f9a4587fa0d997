"""What backends pass around: a job's task, a shard's result, and the safe shard call.

Kept free of models and data so that drivers and backends import it cheaply.
"""

from __future__ import annotations

import os
import socket
import traceback
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from cejobs.run.config import Resources
    from cejobs.run.kinds import JobKind


class ShardError(RuntimeError):
    """A shard that computed but must not be marked done (e.g. non-finite CEs)."""


@dataclass(frozen=True)
class ShardTask:
    """What every worker of a job needs: small and picklable."""

    kind: str  # a key of cejobs.run.kinds.KINDS
    store: str  # store path, on storage every worker shares
    config: Resources  # the validated config of the job (GenerateConfig, EvaluateConfig)
    options: dict[str, Any] = field(default_factory=dict)  # job-kind extras

    @property
    def job(self) -> JobKind:
        from cejobs.run.kinds import KINDS

        return KINDS[self.kind]


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


def worker_name() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def run_shard_safely(worker, shard: int) -> ShardResult:
    """worker.run_shard, with any exception turned into a failed result carrying its traceback."""
    from cejobs.run.store import StoreWriteError

    try:
        return worker.run_shard(shard)
    except StoreWriteError as e:  # one line; the driver stops the run (cejobs.progress)
        return ShardResult(shard, error=str(e), worker=worker_name(), fatal=True)
    except ShardError as e:  # an explained failure: its line says it all
        return ShardResult(shard, error=f"ShardError: {e}", worker=worker_name())
    except Exception as e:  # reported to the driver; the shard is not marked done
        tb = traceback.format_exc(limit=4)
        return ShardResult(shard, error=f"{type(e).__name__}: {e}\n{tb}", worker=worker_name())
