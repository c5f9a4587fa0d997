"""pytest fixture for the local single-node SLURM (slurm/local/cluster.sh).

Loaded through ``pytest_plugins = ["tests.slurm_fixtures"]`` in tests/conftest.py.

``slurm_cluster`` (session scope) makes sure the cluster is up (``cluster.sh install`` when
slurm-wlm/munge are missing, then ``cluster.sh start``) and yields a :class:`SlurmCluster`.
When it cannot be started (not root, no apt-get, daemons failing) the tests using it are
skipped with the reason, or fail when ``CEJOBS_REQUIRE_SLURM=1`` (set in CI).

A cluster that was already running before the session (CI starts it around the test run) is
left running; one that this fixture started is stopped at the end of the session. While the
session runs, ``SLURM_CONF`` is also set in ``os.environ`` so that code calling sbatch itself
(submitit) reaches this cluster; it is restored afterwards.
"""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
CLUSTER_SH = REPO_ROOT / "slurm" / "local" / "cluster.sh"

# Job states after which a job (or array task) will not run again by itself.
TERMINAL_STATES = frozenset(
    {
        "COMPLETED",
        "FAILED",
        "CANCELLED",
        "TIMEOUT",
        "NODE_FAIL",
        "BOOT_FAIL",
        "DEADLINE",
        "OUT_OF_MEMORY",
        "SPECIAL_EXIT",
    }
)


@dataclass
class SlurmCluster:
    """Client-side helper for the local cluster. Accounting is off: no sacct; states come
    from ``scontrol show job`` (completed jobs stay visible for MinJobAge=600 s)."""

    env: dict[str, str]
    conf: str
    started_here: bool = False
    _seen: set[str] = field(default_factory=set, repr=False)

    def run(
        self, args: Sequence[str], cwd: str | os.PathLike[str] | None = None, check: bool = True,
        timeout: float = 60,
    ) -> subprocess.CompletedProcess[str]:
        """Run a SLURM client command (``["scontrol", "show", "node"]``) against this cluster."""
        proc = subprocess.run(
            list(args), cwd=cwd, env=self.env, capture_output=True, text=True, timeout=timeout
        )
        if check and proc.returncode != 0:
            raise RuntimeError(
                f"{shlex.join(args)} failed ({proc.returncode}): {proc.stderr.strip() or proc.stdout.strip()}"
            )
        return proc

    def sbatch(self, args: Sequence[str], cwd: str | os.PathLike[str] | None = None) -> str:
        """Submit (``sbatch --parsable *args``) from ``cwd``; return the job id ("42")."""
        out = self.run(["sbatch", "--parsable", *args], cwd=cwd).stdout.strip()
        job_id = out.splitlines()[-1].split(";")[0].strip()
        if not job_id.isdigit():
            raise RuntimeError(f"unexpected sbatch output: {out!r}")
        return job_id

    def job_states(self, job_id: str) -> dict[str, str]:
        """State of a job, or of each task of an array ("42_0" -> "COMPLETED").

        Pending array tasks not yet split off show as one "42_[2-3]" entry. Empty when SLURM
        does not know the id (never submitted, or purged after MinJobAge)."""
        proc = self.run(["scontrol", "-o", "show", "job", str(job_id)], check=False)
        if proc.returncode != 0:
            if "Invalid job id" in proc.stderr:
                return {}
            raise RuntimeError(f"scontrol show job {job_id} failed: {proc.stderr.strip()}")
        states: dict[str, str] = {}
        for line in proc.stdout.splitlines():
            fields = dict(re.findall(r"(\w+)=(\S*)", line))
            if "JobState" not in fields:
                continue
            key = fields.get("JobId", "?")
            if fields.get("ArrayJobId") and fields.get("ArrayTaskId"):
                task = fields["ArrayTaskId"]
                key = f"{fields['ArrayJobId']}_{task if task.isdigit() else '[' + task + ']'}"
            states[key] = fields["JobState"]
        return states

    def wait(self, job_id: str, timeout: float = 120, poll: float = 0.5) -> dict[str, str]:
        """Wait until the job (every array task) is in a terminal state; return the states.

        Raises TimeoutError with the last states seen."""
        deadline = time.monotonic() + timeout
        states: dict[str, str] = {}
        while True:
            states = self.job_states(job_id)
            if states:
                self._seen.add(str(job_id))
            elif str(job_id) not in self._seen:
                raise RuntimeError(f"SLURM does not know job {job_id}")
            if states and all(s in TERMINAL_STATES for s in states.values()):
                return states
            if time.monotonic() > deadline:
                raise TimeoutError(f"job {job_id} not finished after {timeout}s: {states}")
            time.sleep(poll)

    def squeue(self, all_states: bool = False) -> list[dict[str, str]]:
        """Jobs in the queue (``all_states``: also finished ones still in memory), as dicts
        with id ("42" or "42_1"), state, name, reason."""
        args = ["squeue", "-h", "-o", "%i|%T|%r|%j"]
        if all_states:
            args += ["-t", "all"]
        rows = []
        for line in self.run(args).stdout.splitlines():
            parts = line.split("|", 3)
            if len(parts) == 4:
                rows.append(dict(zip(("id", "state", "reason", "name"), parts)))
        return rows

    def scancel(self, *args: str) -> None:
        self.run(["scancel", *args])


def _unavailable(reason: str) -> None:
    if os.environ.get("CEJOBS_REQUIRE_SLURM") == "1":
        pytest.fail(f"CEJOBS_REQUIRE_SLURM=1 but the local SLURM is unavailable: {reason}", pytrace=False)
    pytest.skip(f"local SLURM unavailable: {reason}")


def _cluster_sh(cmd: str, timeout: float) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", str(CLUSTER_SH), cmd], capture_output=True, text=True, timeout=timeout
    )


def _why(proc: subprocess.CompletedProcess[str]) -> str:
    """The cluster.sh error line (``cluster.sh: error: ...``), else the last stderr line."""
    lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
    errors = [ln for ln in lines if "cluster.sh: error:" in ln]
    if errors:
        return errors[0].split("cluster.sh: error:", 1)[1].strip()
    return lines[-1] if lines else f"exit status {proc.returncode}"


@pytest.fixture(scope="session")
def slurm_cluster() -> Iterator[SlurmCluster]:
    if not CLUSTER_SH.is_file():
        _unavailable(f"{CLUSTER_SH} is missing")
    try:
        was_running = _cluster_sh("status", timeout=60).returncode == 0
        if not was_running:
            for cmd, timeout in (("install", 900), ("start", 180)):
                proc = _cluster_sh(cmd, timeout=timeout)
                if proc.returncode != 0:
                    _unavailable(f"`cluster.sh {cmd}` failed: {_why(proc)}")
        env_out = _cluster_sh("env", timeout=30).stdout
    except subprocess.TimeoutExpired as exc:
        _unavailable(f"`{shlex.join(map(str, exc.cmd))}` timed out after {exc.timeout}s")
    except OSError as exc:
        _unavailable(f"cannot run cluster.sh: {exc}")

    exports = dict(re.findall(r"^export (\w+)=(.*)$", env_out, flags=re.M))
    exports = {k: (shlex.split(v)[0] if v else "") for k, v in exports.items()}
    if "SLURM_CONF" not in exports:
        _unavailable(f"`cluster.sh env` printed no SLURM_CONF: {env_out!r}")

    saved = {k: os.environ.get(k) for k in exports}
    os.environ.update(exports)
    cluster = SlurmCluster(env={**os.environ, **exports}, conf=exports["SLURM_CONF"], started_here=not was_running)
    try:
        yield cluster
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        if not was_running:
            _cluster_sh("stop", timeout=120)
