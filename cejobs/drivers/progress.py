"""The driver's progress over shards: a bar with CEs/s while results arrive, errors kept for
the end. Used by generate and evaluate alike. A result whose write the storage refused
(`fatal`: disk full, read-only) raises StoreWriteError, which ends the run with one line.

The bar is `tqdm.auto`'s: a widget in a notebook, text on a terminal. While it is open, the
console handlers of Ray's loggers write through `tqdm.write` (tqdm's logging redirect), so
their lines land above the bar, never inside it; the command's own handlers do so always
(cejobs.cli).
"""

from __future__ import annotations

import contextlib
import logging
import sys
import time

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm

from cejobs.jobs.results import ShardResult

log = logging.getLogger(__name__)
REDIRECTED = ("ray",)  # loggers whose console lines go above the bar while it is open


class Progress:
    def __init__(self, total: int, enabled: bool, desc: str = "shards", done: int = 0):
        self.label = ""  # what is running now (evaluate: the store's label)
        self.ces = self.shards = 0
        self.errors: list[str] = []
        self.start = time.perf_counter()
        self._redirect = contextlib.ExitStack()
        if enabled:
            self._redirect.enter_context(logging_redirect_tqdm(
                [logging.getLogger(name) for name in REDIRECTED], tqdm_class=tqdm))
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
            log.warning(self.errors[-1].splitlines()[0])

    def close(self) -> float:
        """Seconds since the start."""
        self.bar.close()
        self._redirect.close()
        return time.perf_counter() - self.start
