"""The test side of the shard gate in tests/hooks/sitecustomize.py (see its docstring)."""

from __future__ import annotations

import os
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
HOOKS = REPO / "tests" / "hooks"


class Gate:
    """A folder that holds back shards: `env` goes to the processes that run them."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)

    @property
    def env(self) -> dict[str, str]:
        paths = [str(HOOKS), str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
        return {"CEJOBS_TEST_GATE": str(self.path), "PYTHONPATH": os.pathsep.join(paths)}

    def allow(self, *shards: int) -> None:
        for shard in shards:
            (self.path / str(shard)).touch()

    def open(self) -> None:
        (self.path / "open").touch()

    def waiting(self) -> dict[int, int]:
        """shard -> pid of the worker process waiting at the gate with it now."""
        found = {}
        for p in self.path.glob("waiting-*"):
            _, shard, pid = p.name.split("-")
            found[int(shard)] = int(pid)
        return found

    def writes(self) -> dict[int, list[tuple[int, int, float]]]:
        """shard -> [(pid, start ns, end ns or inf)] of every write of it (hooks docstring)."""
        found: dict[int, list[tuple[int, int, float]]] = {}
        for p in (self.path / "writes").glob("*"):
            shard, pid, start, *end = p.name.split("-")
            found.setdefault(int(shard), []).append(
                (int(pid), int(start), float(end[0]) if end else float("inf")))
        return found

    def assert_one_writer_at_a_time(self) -> None:
        """No two processes wrote one shard at overlapping times."""
        for shard, spans in self.writes().items():
            spans.sort(key=lambda x: x[1])
            for (pid_a, _, end_a), (pid_b, start_b, _) in zip(spans, spans[1:]):
                assert pid_a == pid_b or end_a < start_b, (
                    f"shard {shard} written by pids {pid_a} and {pid_b} at once: {spans}")
