"""The status of a store, read from the store (`python -m cejobs.status`, cejobs.cli).

Counts come from the `shard/done` flags; throughput from the shards' start and finish times
(the union of their busy intervals, so gaps between interrupted runs don't count).
"""

from __future__ import annotations

import sys
from dataclasses import dataclass

import numpy as np

from cejobs.store.format import STORE_FORMAT
from cejobs.store.store import CEStore


@dataclass
class StoreStatus:
    shards_done: int
    shards_total: int
    ces_done: int
    ces_total: int
    busy_seconds: float  # wall time during which at least one shard was running

    @property
    def rate(self) -> float:
        """CEs per second of busy wall time (0 when nothing is done)."""
        return self.ces_done / self.busy_seconds if self.busy_seconds > 0 else 0.0

    @property
    def eta_seconds(self) -> float | None:
        left = self.ces_total - self.ces_done
        if left == 0:
            return 0.0
        return left / self.rate if self.rate > 0 else None


def busy_time(starts: np.ndarray, ends: np.ndarray) -> float:
    """Length of the union of the intervals [starts[i], ends[i]]."""
    order = np.argsort(starts)
    total, cur_start, cur_end = 0.0, None, None
    for s, e in zip(starts[order], ends[order]):
        if cur_end is None or s > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    if cur_end is not None:
        total += cur_end - cur_start
    return float(total)


def store_status(store: CEStore, prefix: str = "shard") -> StoreStatus:
    layout = store.layout
    done = store.done(prefix)
    sizes = np.array([layout.rows(s).stop - layout.rows(s).start for s in range(len(done))])
    ces = sizes * layout.ces_per_source
    starts = store.read_per_shard(f"{prefix}/started_at")[done]
    ends = store.read_per_shard(f"{prefix}/finished_at")[done]
    timed = np.isfinite(starts) & np.isfinite(ends)
    return StoreStatus(
        shards_done=int(done.sum()), shards_total=len(done), ces_done=int(ces[done].sum()),
        ces_total=int(ces.sum()), busy_seconds=busy_time(starts[timed], ends[timed]),
    )


def format_duration(seconds: float | None) -> str:
    if seconds is None:
        return "unknown"
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h}h{m:02d}m{s:02d}s" if h else f"{m}m{s:02d}s"


def format_status(store: CEStore, st: StoreStatus) -> str:
    pct = 100.0 * st.shards_done / max(st.shards_total, 1)
    return (f"{store.storage}: {st.shards_done}/{st.shards_total} shards done ({pct:.0f}%), "
            f"{st.ces_done}/{st.ces_total} CEs, {st.rate:.2f} CE/s, "
            f"ETA {format_duration(st.eta_seconds)}")


def run_status(path: str, verify: bool = False) -> int:
    """Print the status line of the store at `path`; with `verify`, re-read and repair it
    (cejobs.store.repair). The exit status: 0 when nothing is damaged, 1 otherwise."""
    store = CEStore.open(path)
    print(format_status(store, store_status(store)))
    if not verify:
        damaged = {p: s for p, s in store.damaged_flags.items() if s}
        for prefix, shards in damaged.items():
            print(f"damaged {prefix}/done chunk(s) of shard(s) {shards}: run this with --verify, "
                  f"or generate, to redo them", file=sys.stderr)
        return 1 if damaged else 0
    from cejobs.store.repair import repair

    found = repair(store, decode=True)
    for line in found.lines():
        print(line)
    if found.unchecked:
        print(f"verify: checksums are not recorded in this store ({len(found.unchecked)} "
              f"arrays, made by cejobs before {STORE_FORMAT}): their chunks were only "
              f"decoded, so a changed byte may go unseen")
    if not found.damaged:
        print(f"verify: all {int(store.done().sum())} done shards read back intact")
        return 0
    print(f"verify: {found.summary()}", file=sys.stderr)
    return 1
