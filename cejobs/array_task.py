"""What one SLURM array task runs (slurm/gen_ce.sh, slurm/eval_ce.sh).

    python -m cejobs.array_task generate --config FILE [generate flags]
    python -m cejobs.array_task evaluate --store S --classifier NAME=CKPT [evaluate flags]
    python -m cejobs.array_task summary --store S      # generate's final step
    python -m cejobs.array_task evaluate-summary [evaluate flags]   # evaluate's final step

`generate` / `evaluate` create or open the store (creation is atomic, so every task may try),
then claim and run shards until none is left (cejobs.backends.slurm). The first task of an
array to get there submits the final step: one small job, `--dependency=afterany:<array>`, that
runs when every task has ended (completed, failed or cancelled). For generate it verifies the
store and prints its status line; for evaluate it runs `python -m cejobs.evaluate` with the
same arguments, which finds every shard done and only computes the metrics, tables and figures.

Signals (the batch script `exec`s this process, so `#SBATCH --signal=B:USR2@120` reaches it):
- SIGUSR2 (time limit near, or preemption): abandon the running shard (not done, claim
  released), `scontrol requeue` this task, exit 0. The requeued task continues from the store.
- SIGTERM (scancel, or the scheduler's own preemption): the same, without requeue; exit 143.

Environment: CEJOBS_SUMMARY=0 skips the final step; CEJOBS_SUMMARY_SBATCH adds sbatch flags
to it (e.g. "--partition=cpu --time=60").
"""

from __future__ import annotations

import shlex
import sys

from cejobs.backends.slurm.array import run_array_task
from cejobs.backends.slurm.claims import ClaimBoard, Owner, claims_root, remove_claims
from cejobs.drivers.array import PREPARE
from cejobs.jobs.kinds import KINDS


def summarize(argv: list[str]) -> int:
    """Verify a generation store, print its status line, list failures; clean up claims when
    complete. Exit 0 iff every shard is done and intact."""
    from cejobs.store.repair import repair
    from cejobs.store.store import CEStore
    from cejobs.drivers.status import format_status, store_status

    from cejobs.settings import ArgParser

    parser = ArgParser(prog="python -m cejobs.array_task summary")
    parser.add_argument("--store", required=True, help="zarr store path")
    args = parser.parse_args(argv)
    store = CEStore.open(args.store)
    done = int(store.done().sum())
    found = repair(store, decode=True)  # young leftovers are kept: a resubmission may run
    for line in found.lines():
        print(line)
    if found.generation:
        print(f"verify: {len(found.generation)} shard(s) marked not done: {found.generation}")
    else:
        print(f"verify: all {done} done shards read back intact")
    print(format_status(store, store_status(store)))
    namespace = KINDS["generate"].namespace
    failures = ClaimBoard(claims_root(store.storage, namespace), Owner.current()).failures()
    for shard, errors in sorted(failures.items()):
        if not store.done()[shard]:
            print(f"shard {shard} failed {len(errors)} time(s); last error: "
                  f"{errors[-1].strip().splitlines()[0]}")
    left = store.num_shards - int(store.done().sum())
    if left:
        print(f"incomplete: {left} shard(s) not done; resubmit the same sbatch command to "
              f"finish them")
        return 1
    remove_claims(store.storage, namespace)
    print(f"complete: evaluate with: "
          f"python -m cejobs.evaluate --store {shlex.quote(str(store.storage))}")
    return 0


def evaluate_summary(argv: list[str]) -> int:
    """The final step of slurm/eval_ce.sh: `python -m cejobs.evaluate` with the tasks' arguments
    in this process (every shard is normally evaluated by now, so it only computes the metrics,
    tables and figures; any shard left is evaluated here), then the claims are removed."""
    from cejobs.cli import evaluate_main
    from cejobs.jobs.config import parse_evaluate_args

    code = evaluate_main([*argv, "--backend", "local", "--no-progress"])
    if code == 0:
        for path in parse_evaluate_args(argv).store:
            remove_claims(path, KINDS["evaluate"].namespace)
    return code


COMMANDS = {"generate": lambda argv: run_array_task("generate", lambda: PREPARE["generate"](argv)),
            "evaluate": lambda argv: run_array_task("evaluate", lambda: PREPARE["evaluate"](argv)),
            "summary": summarize,
            "evaluate-summary": evaluate_summary}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        print(f"error: the first argument must be one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":  # bad input: one line, exit 2 (cejobs.cli)
    from cejobs.cli import run_cli

    run_cli(main)
