"""The one interface every backend implements (docs/design.md §7)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable, Protocol, Sequence

from cejobs.jobs.results import ShardResult
from cejobs.jobs.tasks import ShardTask

if TYPE_CHECKING:
    from cejobs.jobs.config import Resources

OnResult = Callable[[ShardResult], None]


@dataclass
class RunReport:
    done: list[int] = field(default_factory=list)  # shards finished in this run
    failed: dict[int, str] = field(default_factory=dict)  # shard -> last error, for good


class Backend(Protocol):
    """Built from the run's resource fields; checked before any store is touched; then runs
    the shards of a task. `cejobs.backends.make_ready_backend` calls the three in this order."""

    @classmethod
    def from_config(cls, resources: Resources) -> Backend:
        """The backend, from the `Resources` fields of a generate or evaluate config."""
        ...

    def preflight(self) -> None:
        """The checks that need no store (a device exists, a cluster answers), in bounded
        time; a problem is a ConfigError with one line."""
        ...

    def run(self, task: ShardTask, shards: Sequence[int], on_result: OnResult) -> RunReport:
        """Run every shard once (retrying lost workers), calling on_result per result."""
        ...
