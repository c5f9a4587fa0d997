"""The driver's progress over shards: a bar with CEs/s while results arrive, errors kept for
the end. Used by generate and evaluate alike. A result whose write the storage refused
(`fatal`: disk full, read-only) raises StoreWriteError, which ends the run with one line."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

from cejobs.jobs.results import ShardResult


class Progress:
    def __init__(self, total: int, enabled: bool, desc: str = "shards", done: int = 0):
        self.label = ""  # what is running now (evaluate: the store's label)
        self.ces = self.shards = 0
        self.errors: list[str] = []
        self.start = time.perf_counter()
        self.bar = tqdm(total=total, initial=done, unit="shard", desc=desc, disable=not enabled,
                        dynamic_ncols=True, file=sys.stderr)

    def __call__(self, result: ShardResult) -> None:
        where = f"{self.label} " if self.label else ""
        if result.ok:
            self.ces += result.ces
            self.shards += 1
            rate = self.ces / max(time.perf_counter() - self.start, 1e-9)
            self.bar.set_postfix_str(f"{where}{rate:.2f} CE/s", refresh=False)
            self.bar.update(1)
        elif result.fatal:  # the storage refused a write: stop at the first one
            from cejobs.errors import StoreWriteError

            raise StoreWriteError(f"{where}shard {result.shard}: {result.error}")
        else:
            self.errors.append(f"{where}shard {result.shard} failed: {result.error.strip()}")
            tqdm.write(self.errors[-1].splitlines()[0], file=sys.stderr)

    def close(self) -> float:
        """Seconds since the start."""
        self.bar.close()
        return time.perf_counter() - self.start
