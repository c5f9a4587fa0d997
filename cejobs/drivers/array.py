"""The start of a SLURM array task: create or open the store(s) from the task's command line,
as the generate and evaluate drivers do (creation is atomic, so every task of an array may
try); the tasks to claim shards of, and the argv of the summary step after the array."""

from __future__ import annotations

from cejobs.jobs.config import check_slurm_store, parse_evaluate_args, parse_generate_args
from cejobs.jobs.kinds import KINDS
from cejobs.jobs.tasks import ShardTask


def prepare_generate(argv: list[str]) -> tuple[list[ShardTask], list[str]]:
    from cejobs.drivers.generate import prepare

    config = parse_generate_args(argv, prog="python -m cejobs.array_task generate")
    check_slurm_store("slurm", [config.resolved_store()])
    path = str(prepare(config).storage.resolve())
    return [ShardTask(KINDS["generate"], path, config)], ["summary", "--store", path]


def prepare_evaluate(argv: list[str]) -> tuple[list[ShardTask], list[str]]:
    from cejobs.drivers.evaluate import create_tasks, prepare

    config = parse_evaluate_args(argv, prog="python -m cejobs.array_task evaluate")
    check_slurm_store("slurm", config.store)
    return create_tasks(prepare(config)), ["evaluate-summary", *argv]


PREPARE = {"generate": prepare_generate, "evaluate": prepare_evaluate}
