"""One SLURM array task of slurm/gen_ce.sh or slurm/eval_ce.sh: prepare, claim, run, stop.

`run_array_task(kind, argv)`: the job kind creates or opens the store(s) (creation is atomic,
so every task may try); the first task of the array to get there submits the summary step
(`--dependency=afterany:<array>`); then the task claims and runs shards until none is left
(loop.py). SIGUSR2 abandons the running shard and requeues the task (requeue.py);
SIGTERM does the same without requeue and exits 143.
"""

from __future__ import annotations

import os
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from cejobs.backends.slurm.claims import Owner, claims_root, log
from cejobs.backends.slurm.loop import Stopper, claim_loop
from cejobs.backends.slurm.requeue import requeue_self
from cejobs.slurm_env import current_job, submission_env

if TYPE_CHECKING:
    from cejobs.jobs.tasks import ShardTask

EXIT_FAILED = 1  # some shard failed in this task
EXIT_TERMINATED = 143  # stopped by SIGTERM (128 + 15)
SUMMARY_SBATCH = ["--ntasks=1", "--cpus-per-task=1", "--mem=4G", "--time=60"]


def submit_summary(task: ShardTask, command: list[str], name: str) -> str | None:
    """Submit the final step once per array (the first task to get here wins); its job id."""
    job = current_job()
    array = job.array
    if not array or os.environ.get("CEJOBS_SUMMARY", "1") == "0":
        return None
    root = claims_root(task.store, task.job.namespace)
    marker = f"summary.{array}"
    if not root.create(marker, b""):  # another task of the array submitted it
        return None
    workdir = job.submit_dir or os.getcwd()
    args = ["sbatch", "--parsable", f"--dependency=afterany:{array}", "--kill-on-invalid-dep=yes",
            f"--job-name={name}-summary", f"--chdir={workdir}",
            f"--output={Path(workdir) / f'{name}-summary-%j.out'}", *SUMMARY_SBATCH]
    if job.partition:
        args.append(f"--partition={job.partition}")
    if job.account:
        args.append(f"--account={job.account}")
    args += shlex.split(os.environ.get("CEJOBS_SUMMARY_SBATCH", ""))
    args += ["--wrap", shlex.join(command)]
    proc = subprocess.run(args, capture_output=True, text=True, env=submission_env(),
                          timeout=120)
    said = proc.stdout if proc.returncode == 0 else f"failed: {proc.stderr}"
    root.write(marker, said.encode())
    if proc.returncode != 0:
        log(f"could not submit the summary job: {proc.stderr.strip()}")
        return None
    summary = proc.stdout.strip().split(";")[0]
    log(f"summary job {summary} runs after array {array}: "
        f"{Path(workdir) / f'{name}-summary-{summary}.out'}")
    return summary


def run_array_task(kind: str, prepare: Callable[[], tuple[list[ShardTask], list[str]]]) -> int:
    """What `python -m cejobs.array_task generate|evaluate` runs; its exit status. `prepare`
    creates or opens the store(s) (cejobs.drivers.array), after the signal handlers are set."""
    stopper = Stopper().install((signal.SIGUSR2, signal.SIGTERM))
    owner = Owner.current()
    log(f"{kind} task {owner.label}, run {owner.run}")
    tasks, summary = prepare()
    submit_summary(tasks[0], [sys.executable, "-m", "cejobs.array_task", *summary],
                   current_job().name or f"cejobs-{kind}")
    start = int(current_job().array_task_id or 0)
    failed = 0
    for task in tasks:
        report = claim_loop(task, owner=owner, stopper=stopper, start=start)
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
