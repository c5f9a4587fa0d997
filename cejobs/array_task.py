"""What one SLURM array task runs (slurm/gen_ce.sh, slurm/eval_ce.sh).

    python -m cejobs.array_task generate --config FILE [generate flags]
    python -m cejobs.array_task evaluate --store S --classifier NAME=CKPT [evaluate flags]
    python -m cejobs.array_task summary --store S      # generate's final step
    python -m cejobs.array_task evaluate-summary [evaluate flags]   # evaluate's final step

`generate` / `evaluate` create or open the store (creation is atomic, so every task may try),
then claim and run shards until none is left (cejobs.claims). The first task of an array to
get there submits the final step: one small job, `--dependency=afterany:<array>`, that runs
when every task has ended (completed, failed or cancelled). For generate it verifies the store
and prints its status line; for evaluate it runs `python -m cejobs.evaluate` with the same
arguments, which finds every shard done and only computes the metrics, tables and figures.

Signals (the batch script `exec`s this process, so `#SBATCH --signal=B:USR2@120` reaches it):
- SIGUSR2 (time limit near, or preemption): abandon the running shard (not done, claim
  released), `scontrol requeue` this task, exit 0. The requeued task continues from the store.
- SIGTERM (scancel, or the scheduler's own preemption): the same, without requeue; exit 143.

Environment: CEJOBS_SUMMARY=0 skips the final step; CEJOBS_SUMMARY_SBATCH adds sbatch flags
to it (e.g. "--partition=cpu --time=60").
"""

from __future__ import annotations

import argparse
import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path

from typing import TYPE_CHECKING

from cejobs.claims import (WORK, ClaimBoard, Owner, Stopper, claim_loop, claims_root, log,
                           remove_claims)

if TYPE_CHECKING:  # the summary step runs without torch
    from cejobs.tasks import ShardTask

EXIT_FAILED = 1  # some shard failed in this task
EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15)
SUMMARY_SBATCH = ["--ntasks=1", "--cpus-per-task=1", "--mem=4G", "--time=60"]


# ---------------------------------------------------------------------------- preparing
def prepare_generate(argv: list[str]) -> tuple[list[ShardTask], list[str]]:
    """Create or open the store of a generate configuration; the task, and the summary command."""
    from cejobs.config import parse_generate_args
    from cejobs.generate import prepare
    from cejobs.tasks import ShardTask

    config = parse_generate_args(argv, prog="python -m cejobs.array_task generate")
    store = prepare(config)
    path = str(store.path.resolve())
    task = ShardTask("generate", path, config.to_dict())
    return [task], [sys.executable, "-m", "cejobs.array_task", "summary", "--store", path]


def prepare_evaluate(argv: list[str]) -> tuple[list[ShardTask], list[str]]:
    """The checks and eval/<name> arrays of `python -m cejobs.evaluate` (same flags), one task
    per store; the final step is evaluate itself, which then only aggregates."""
    from cejobs import evaluate

    tasks = evaluate.create_tasks(evaluate.prepare(argv))
    return tasks, [sys.executable, "-m", "cejobs.array_task", "evaluate-summary", *argv]


PREPARE = {"generate": prepare_generate, "evaluate": prepare_evaluate}


# ---------------------------------------------------------------------------- SLURM calls
def _sbatch_env() -> dict[str, str]:
    """This environment minus the job's own SLURM_* variables (SLURM_CONF kept), so that a
    job submitted from inside a task does not inherit the task's identity."""
    return {k: v for k, v in os.environ.items()
            if not k.startswith("SLURM_") or k == "SLURM_CONF"}


def submit_summary(task: ShardTask, command: list[str], name: str) -> str | None:
    """Submit the final step once per array (the first task to get here wins); its job id."""
    env = os.environ
    array = env.get("SLURM_ARRAY_JOB_ID") or env.get("SLURM_JOB_ID")
    if not array or env.get("CEJOBS_SUMMARY", "1") == "0":
        return None
    root = claims_root(task.store, WORK[task.kind].namespace)
    root.mkdir(parents=True, exist_ok=True)
    marker = root / f"summary.{array}"
    try:
        fd = os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
    except FileExistsError:
        return None
    workdir = env.get("SLURM_SUBMIT_DIR", os.getcwd())
    args = ["sbatch", "--parsable", f"--dependency=afterany:{array}", "--kill-on-invalid-dep=yes",
            f"--job-name={name}-summary", f"--chdir={workdir}",
            f"--output={Path(workdir) / f'{name}-summary-%j.out'}", *SUMMARY_SBATCH]
    if env.get("SLURM_JOB_PARTITION"):
        args.append(f"--partition={env['SLURM_JOB_PARTITION']}")
    if env.get("SLURM_JOB_ACCOUNT"):
        args.append(f"--account={env['SLURM_JOB_ACCOUNT']}")
    args += shlex.split(env.get("CEJOBS_SUMMARY_SBATCH", ""))
    args += ["--wrap", shlex.join(command)]
    proc = subprocess.run(args, capture_output=True, text=True, env=_sbatch_env(), timeout=120)
    with os.fdopen(fd, "w") as f:
        f.write(proc.stdout if proc.returncode == 0 else f"failed: {proc.stderr}")
    if proc.returncode != 0:
        log(f"could not submit the summary job: {proc.stderr.strip()}")
        return None
    job = proc.stdout.strip().split(";")[0]
    log(f"summary job {job} runs after array {array}: "
        f"{Path(workdir) / f'{name}-summary-{job}.out'}")
    return job


def requeue_self() -> bool:
    job = os.environ.get("SLURM_JOB_ID")
    if not job:
        log("not in a SLURM job: nothing to requeue")
        return False
    proc = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True,
                          timeout=120)
    if proc.returncode != 0:
        log(f"scontrol requeue {job} failed: {proc.stderr.strip()}; resubmit to finish the rest")
        return False
    log(f"requeued job {job}: it continues from the store when it starts again")
    return True


# ---------------------------------------------------------------------------- commands
def run_tasks(kind: str, argv: list[str]) -> int:
    stopper = Stopper().install((signal.SIGUSR2, signal.SIGTERM))
    owner = Owner.current()
    log(f"{kind} task {owner.label}, run {owner.run}")
    tasks, summary = PREPARE[kind](argv)
    submit_summary(tasks[0], summary, os.environ.get("SLURM_JOB_NAME") or f"cejobs-{kind}")
    start = int(os.environ.get("SLURM_ARRAY_TASK_ID") or 0)
    failed = 0
    for task in tasks:
        report = claim_loop(task, owner=owner, stopper=stopper, start=start,
                            threads=int(task.config.get("threads") or 0),
                            max_attempts=int(task.config.get("max_retries", 3)) + 1)
        failed += len(report.failed)
        log(f"{task.store}: {len(report.done)} shard(s) done here, {len(report.failed)} failed")
        if report.interrupted:
            break
    if stopper.reason == "SIGUSR2":
        requeue_self()
        return 0
    if stopper.reason:
        return EXIT_TERMINATED
    return EXIT_FAILED if failed else 0


def summarize(argv: list[str]) -> int:
    """Verify a generation store, print its status line, list failures; clean up claims when
    complete. Exit 0 iff every shard is done and intact."""
    from cejobs.status import format_status, store_status
    from cejobs.store import CEStore

    parser = argparse.ArgumentParser(prog="python -m cejobs.array_task summary")
    parser.add_argument("--store", required=True, help="zarr store path")
    args = parser.parse_args(argv)
    store = CEStore.open(args.store)
    problems = store.verify()
    done = store.done()
    # Clear only done shards with a missing or unreadable chunk. A `*.partial` file may be a
    # write in flight (a resubmitted array can already be running), so it is only reported;
    # the shard's next write removes it.
    bad = sorted(s for s, items in problems.items()
                 if done[s] and any(not i.startswith("leftover") for i in items))
    for shard, items in sorted(problems.items()):
        for item in items:
            print(f"verify: shard {shard}: {item}")
    if bad:
        store.clear_done(bad)
        print(f"verify: {len(bad)} shard(s) marked not done: {bad}")
    else:
        print(f"verify: all {int(done.sum())} done shards read back intact")
    print(format_status(store, store_status(store)))
    root = claims_root(store.path, "shard")
    failures = ClaimBoard(root, Owner.current()).failures() if root.is_dir() else {}
    for shard, errors in sorted(failures.items()):
        if not store.done()[shard]:
            print(f"shard {shard} failed {len(errors)} time(s); last error: "
                  f"{errors[-1].strip().splitlines()[0]}")
    left = store.num_shards - int(store.done().sum())
    if left:
        print(f"incomplete: {left} shard(s) not done; resubmit the same sbatch command to "
              f"finish them")
        return 1
    remove_claims(store.path, "shard")
    print(f"complete: evaluate with: "
          f"python -m cejobs.evaluate --store {shlex.quote(str(store.path))}")
    return 0


def evaluate_summary(argv: list[str]) -> int:
    """The final step of slurm/eval_ce.sh: `python -m cejobs.evaluate` with the tasks' arguments
    in this process (every shard is normally evaluated by now, so it only computes the metrics,
    tables and figures; any shard left is evaluated here), then the claims are removed."""
    from cejobs import evaluate

    code = evaluate.main([*argv, "--backend", "local", "--no-progress"])
    if code == 0:
        paths = vars(evaluate.build_parser().parse_args(argv))["store"]
        for path in paths:
            remove_claims(path, WORK["evaluate"].namespace)
    return code


COMMANDS = {"generate": lambda argv: run_tasks("generate", argv),
            "evaluate": lambda argv: run_tasks("evaluate", argv),
            "summary": summarize,
            "evaluate-summary": evaluate_summary}


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in COMMANDS:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        print(f"error: the first argument must be one of {', '.join(COMMANDS)}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])


if __name__ == "__main__":
    if sys.argv[1:2] == ["summary"]:  # light: no torch (cejobs.cli imports the data loaders)
        from cejobs.store import StoreError

        try:
            sys.exit(main())
        except StoreError as e:
            print(f"error: {e}", file=sys.stderr)
            sys.exit(2)
    from cejobs.cli import run_cli

    run_cli(main)
