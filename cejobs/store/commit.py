"""The commit guard: a stop signal that arrives while a shard commits lets the commit finish.

A shard commits its chunks, then its done flag (CEStore.write_shard). A stop handler (the
drivers', the SLURM claim loop's) asks `COMMIT.active` and, while it is, lets the commit finish
rather than leave the shard half written.
"""

from __future__ import annotations


class CommitGuard:
    """Marks the code that commits a shard; nests."""

    def __init__(self) -> None:
        self.depth = 0

    @property
    def active(self) -> bool:
        return self.depth > 0

    def __enter__(self) -> "CommitGuard":
        self.depth += 1
        return self

    def __exit__(self, *exc) -> None:
        self.depth -= 1


COMMIT = CommitGuard()  # signal handlers run in the main thread, which commits shards
