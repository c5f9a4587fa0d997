"""What backends pass around: a job's task, a shard's result, and the safe shard call.

Kept free of models and data so that drivers and backends import it cheaply.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import socket
import traceback
from dataclasses import dataclass, field
from pathlib import Path
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


def host_address() -> str | None:
    """This host's IPv4 address: the source address of its default route, else its first
    non-loopback local address (Linux's /proc/net/fib_trie, per network namespace)."""
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent, only a route looked up
        return s.getsockname()[0]
    with contextlib.suppress(OSError):
        found = re.findall(r"\|-- (\d+\.\d+\.\d+\.\d+)\n\s+/32 host LOCAL",
                           Path("/proc/net/fib_trie").read_text())
        return next((a for a in found if not a.startswith("127.")), None)
    return None


@functools.cache
def host_label() -> str:
    """HOST@ADDRESS: hosts that share a name (containers, namespaces) differ by address."""
    address = host_address()
    return f"{socket.gethostname()}@{address}" if address else socket.gethostname()


def worker_name() -> str:
    return f"{host_label()}:{os.getpid()}"


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
