"""The status of a store, read from the store (`python -m cejobs.status`, cejobs.cli).

Counts come from the `shard/done` flags; throughput from the shards' start and finish times
(the union of their busy intervals, so gaps between interrupted runs don't count). Whether a
driver works on the store comes from its driver leases (cejobs.store.lease): running while
the heartbeat is fresh, stalled when it is older than STALLED_S, none when there is no lease
or its process is known to be gone. The ETA is given only while a driver runs (or when
nothing is left). `--json` prints all of it as one JSON object (docs/operations.md).
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cejobs.hosts import holder_gone
from cejobs.store.format import STORE_FORMAT
from cejobs.store.lease import HEARTBEAT_S, read_lease
from cejobs.store.store import CEStore

log = logging.getLogger(__name__)
output = logging.getLogger("cejobs.output")  # a command's results (cejobs.cli)
DRIVER_KINDS = ("generate", "evaluate")  # the driver leases: leases/<kind>.json
STALLED_S = 3 * HEARTBEAT_S  # a heartbeat older than this: the driver is stalled


@dataclass
class DriverState:
    """A driver lease of a store, as status reports it."""

    kind: str  # generate, evaluate
    state: str  # running, stalled, none
    host: str | None = None
    pid: int | None = None
    since: float | None = None  # Unix time the driver started
    heartbeat_age_s: float | None = None

    def describe(self) -> str:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(self.since or 0))
        where = f"{self.kind} driver on {self.host} (pid {self.pid}, since {since}"
        if self.state == "running":
            return f"{where}) running"
        return f"{where}, heartbeat {self.heartbeat_age_s:.0f} s ago) stalled"


def driver_state(store: CEStore, kind: str) -> DriverState:
    """The driver of `kind` on `store`: running, stalled or none (module doc)."""
    info = read_lease(store.storage, f"leases/{kind}.json")
    if info is None or not info.holder or holder_gone(info.holder):
        return DriverState(kind, "none")
    h = info.holder
    state = "running" if info.age <= STALLED_S else "stalled"
    return DriverState(kind, state, h.get("host"), h.get("pid"), h.get("since"),
                       round(info.age, 1))


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


def eta(st: StoreStatus, drivers: list[DriverState] | None) -> float | None:
    """Seconds left while a driver runs (0 when nothing is left); None otherwise. Without
    `drivers` (a SLURM array task's summary, which runs under no driver lease) the rate's
    estimate alone."""
    if st.ces_done == st.ces_total or drivers is None:
        return st.eta_seconds
    return st.eta_seconds if any(d.state == "running" for d in drivers) else None


def format_status(store: CEStore, st: StoreStatus,
                  drivers: list[DriverState] | None = None) -> str:
    """One line: counts, rate, and the ETA (while a driver runs) or what drives the store."""
    pct = 100.0 * st.shards_done / max(st.shards_total, 1)
    line = (f"{store.storage}: {st.shards_done}/{st.shards_total} shards done ({pct:.0f}%), "
            f"{st.ces_done}/{st.ces_total} CEs, {st.rate:.2f} CE/s")
    left = eta(st, drivers)
    if left is not None:
        line += f", ETA {format_duration(left)}"
    if drivers is None:
        return line
    active = [d.describe() for d in drivers if d.state != "none"]
    if active:
        return f"{line}; {'; '.join(active)}"
    return line if st.ces_done == st.ces_total else f"{line}; no driver running"


def status_json(store: CEStore, st: StoreStatus, drivers: list[DriverState],
                damaged: dict[str, list[int]], verify: dict[str, Any] | None) -> dict[str, Any]:
    """What `status --json` prints (docs/operations.md lists the fields)."""
    return {
        "store": str(store.storage), "method": store.attrs.get("config", {}).get("method"),
        "shards_done": st.shards_done, "shards_total": st.shards_total,
        "ces_done": st.ces_done, "ces_total": st.ces_total,
        "rate_ces_per_s": round(st.rate, 4), "busy_seconds": round(st.busy_seconds, 3),
        "eta_seconds": None if (left := eta(st, drivers)) is None else round(left, 1),
        "drivers": {d.kind: asdict(d) for d in drivers},
        "damaged_done_flags": damaged, "verify": verify,
    }


def run_status(path: str, verify: bool = False, as_json: bool = False) -> int:
    """Report the status of the store at `path` (a line, or JSON with `as_json`); with
    `verify`, re-read and repair it (cejobs.store.repair). The exit status: 0 when nothing
    is damaged, 1 otherwise."""
    store = CEStore.open(path)
    st = store_status(store)
    drivers = [driver_state(store, kind) for kind in DRIVER_KINDS]
    damaged = {p: s for p, s in store.damaged_flags.items() if s}
    if not verify:
        if as_json:
            output.info(json.dumps(status_json(store, st, drivers, damaged, None)))
        else:
            output.info(format_status(store, st, drivers))
            for prefix, shards in damaged.items():
                log.warning(f"damaged {prefix}/done chunk(s) of shard(s) {shards}: run this "
                            f"with --verify, or generate, to redo them")
        return 1 if damaged else 0
    from cejobs.store.repair import repair

    found = repair(store, decode=True)
    lines = found.lines()
    if found.unchecked:
        lines.append(f"verify: checksums are not recorded in this store ({len(found.unchecked)} "
                     f"arrays, made by cejobs before {STORE_FORMAT}): their chunks were only "
                     f"decoded, so a changed byte may go unseen")
    if as_json:
        found_json = {"damaged": found.damaged, "redo_shards": found.generation,
                      "summary": found.summary() if found.damaged else None, "lines": lines}
        output.info(json.dumps(status_json(store, st, drivers, damaged, found_json)))
        return 1 if found.damaged else 0
    output.info(format_status(store, st, drivers))
    for line in lines:
        output.info(line)
    if not found.damaged:
        output.info(f"verify: all {int(store.done().sum())} done shards read back intact")
        return 0
    log.warning(f"verify: {found.summary()}")
    return 1
