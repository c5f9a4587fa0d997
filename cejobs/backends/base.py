"""The one interface every backend implements (docs/design.md §7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, Protocol, Sequence

from cejobs.jobs.results import ShardResult
from cejobs.jobs.tasks import ShardTask

OnResult = Callable[[ShardResult], None]


@dataclass
class RunReport:
    done: list[int] = field(default_factory=list)  # shards finished in this run
    failed: dict[int, str] = field(default_factory=dict)  # shard -> last error, for good


class Backend(Protocol):
    def run(self, task: ShardTask, shards: Sequence[int], on_result: OnResult) -> RunReport:
        """Run every shard once (retrying lost workers), calling on_result per result."""
        ...
