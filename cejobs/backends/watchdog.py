"""The hung-shard watchdog's timeout (--shard-timeout), one policy for every backend.

A shard that runs longer than the timeout counts as hung. Ray cancels it (the actor is
killed) and retries it on a fresh actor; on SLURM its claim goes stale and another task takes
it over (docs/design.md §7). Either way the attempt counts against --max-retries.

By default the timeout follows the run: FACTOR times the median of the finished shards'
times, at least FLOOR_S. Until a shard has finished there is no timeout (the first shards
also warm up, compile and load), so a shard that hangs before any finished is caught only
by the backends' other checks (node death, the claim lease).
"""

from __future__ import annotations

import statistics
from typing import Iterable

FACTOR = 10.0  # hung: over this many median shard times
FLOOR_S = 120.0  # never less than this


def shard_timeout(configured: float, finished_seconds: Iterable[float]) -> float | None:
    """Seconds after which a running shard counts as hung, or None (no timeout yet)."""
    if configured > 0:
        return float(configured)
    times = [t for t in finished_seconds if t > 0]
    if not times:
        return None
    return max(FLOOR_S, FACTOR * statistics.median(times))


def describe(configured: float, timeout: float) -> str:
    """How the timeout came about, for the line that says a shard was hung."""
    if configured > 0:
        return f"--shard-timeout {timeout:.0f} s"
    return f"shard timeout {timeout:.0f} s = max({FLOOR_S:.0f} s, {FACTOR:g} x median shard)"
