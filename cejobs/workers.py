"""Job kind -> worker class, an explicit table (no registration by import)."""

from __future__ import annotations

from cejobs.eval.worker import EvaluateWorker
from cejobs.generate_worker import GenerateWorker
from cejobs.tasks import ShardTask

WORKERS = {"generate": GenerateWorker, "evaluate": EvaluateWorker}


def make_worker(task: ShardTask, device: str | None = None):
    """The worker for `task.kind`; it loads its models once and runs many shards."""
    return WORKERS[task.kind](task, device)
