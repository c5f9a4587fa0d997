"""pytest fixtures for a real local Ray cluster, started with `ray start --head`.

Loaded through ``pytest_plugins`` in tests/conftest.py.

- ``ray_cluster`` (session scope): a head with 2 CPUs, no GPUs.
- ``ray_gpu_cluster`` (function scope): the same with ``--num-gpus 2``, fake GPUs that only
  Ray's scheduler sees, so a test can check one worker per "GPU" on a CPU-only machine.

Each head runs on 127.0.0.1 (Ray itself advertises the host's address for its node), with the
dashboard bound to 127.0.0.1, every port chosen free and non-default, and ``--temp-dir`` in its
own short temporary folder (unix sockets live there), so it never meets another Ray on this
machine: ``ray.init()`` elsewhere does not find it, and it does not find theirs.

Recent Ray (2.60 here) turns token authentication on for a new cluster when
``~/.ray/auth_token`` exists (any earlier ``ray.init()`` on this machine may have written it),
and then every client needs the token. These loopback-only test clusters set
``RAY_AUTH_MODE=disabled`` explicitly, for the head, the CLI calls and this process's SDK calls
alike, so the tests do not depend on that file.

Teardown always runs and kills exactly this cluster's processes: ``ray start`` runs in a new
session, so every daemon it spawns carries that session id; the fixture kills those processes
and their descendants (job drivers start their own sessions) by pid. It does not call
``ray stop --force``, which kills every Ray process on the machine, other people's included.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

REPO_ROOT = Path(__file__).resolve().parents[1]
RAY_CLI = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT_S = 180
AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}  # see the module docstring


def _port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        try:
            s.bind(("", port))  # Ray's GCS and raylet listen on every interface
        except OSError:
            return False
    return True


def free_ports(count: int, span: int = 1) -> list[int]:
    """`count` distinct free ports away from Ray's defaults; the last starts `span` free ones."""
    rng = random.Random()
    chosen: list[int] = []
    while len(chosen) < count:
        base = rng.randrange(20000, 30000)
        width = span if len(chosen) == count - 1 else 1
        block = range(base, base + width)
        if all(p not in chosen and _port_free(p) for p in block):
            chosen.append(base)
    return chosen


def _proc_table() -> dict[int, tuple[int, int]]:
    """pid -> (ppid, session id) of every process, read from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) "
        table[int(entry)] = (int(fields[1]), int(fields[3]))
    return table


def session_processes(sid: int) -> list[int]:
    """Processes of session `sid`, and all their descendants (whatever their session)."""
    table = _proc_table()
    children: dict[int, list[int]] = {}
    for pid, (ppid, _) in table.items():
        children.setdefault(ppid, []).append(pid)
    found = {pid for pid, (_, s) in table.items() if s == sid}
    stack = list(found)
    while stack:
        for child in children.get(stack.pop(), []):
            if child not in found:
                found.add(child)
                stack.append(child)
    found.discard(os.getpid())
    return sorted(found)


def kill_session(sid: int, timeout: float = 15.0) -> None:
    """SIGKILL every process of session `sid` and their descendants, by pid, until none is left."""
    deadline = time.monotonic() + timeout
    while (pids := session_processes(sid)) and time.monotonic() < deadline:
        for pid in pids:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.2)


@dataclass
class RayCluster:
    """Client-side helper for one local head."""

    gcs_address: str  # host:port of the GCS (what `ray start --address` takes)
    dashboard_url: str  # http://127.0.0.1:<port>: `ray job submit --address`
    temp_dir: Path
    session_id: int  # session of `ray start` and its daemons (teardown)
    num_gpus: int = 0

    @property
    def env(self) -> dict[str, str]:
        return {**os.environ, **AUTH_ENV, "RAY_ADDRESS": self.dashboard_url,
                "PYTHONUNBUFFERED": "1"}

    def cli(self, *args: str, timeout: float = 300, check: bool = False,
            cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
        """`ray <args>` against this cluster (RAY_ADDRESS is its dashboard)."""
        return subprocess.run([RAY_CLI, *args], cwd=cwd or REPO_ROOT, env=self.env, text=True,
                              capture_output=True, timeout=timeout, check=check)

    def submit(self, entrypoint: Sequence[str], *, submission_id: str | None = None,
               wait: bool = True, runtime_env: Path | None = REPO_ROOT / "ray" / "runtime_env.yaml",
               env_vars: dict[str, str] | None = None,
               timeout: float = 300) -> subprocess.CompletedProcess[str]:
        """`ray job submit --address <dashboard> [--runtime-env ...] [--no-wait] -- entrypoint`;
        `env_vars` are added to the runtime env's (then sent as --runtime-env-json)."""
        args = ["job", "submit", "--address", self.dashboard_url, "--log-style", "record"]
        if env_vars:
            spec = yaml.safe_load(runtime_env.read_text()) if runtime_env else {}
            spec["env_vars"] = {**spec.get("env_vars", {}), **env_vars}
            args += ["--runtime-env-json", json.dumps(spec)]
        elif runtime_env is not None:
            args += ["--runtime-env", str(runtime_env)]
        if submission_id:
            args += ["--submission-id", submission_id]
        if not wait:
            args.append("--no-wait")
        return self.cli(*args, "--", *entrypoint, timeout=timeout)

    def jobs(self):
        from ray.job_submission import JobSubmissionClient

        return JobSubmissionClient(self.dashboard_url)

    def wait_job(self, submission_id: str, timeout: float = 300) -> str:
        """Wait until the job is in a terminal state; return the state's name."""
        client = self.jobs()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            status = client.get_job_status(submission_id)
            if status.is_terminal():
                return status.value
            time.sleep(0.5)
        raise TimeoutError(f"job {submission_id} still {status.value} after {timeout} s")

    def actors(self, class_name: str = "ShardActor", state: str | None = None,
               detail: bool = False) -> list[dict]:
        """Actors of this cluster from Ray's state API (`ray list actors`)."""
        from ray.util.state import list_actors

        filters = [("class_name", "=", class_name)]
        if state:
            filters.append(("state", "=", state))
        return [a if isinstance(a, dict) else a.__dict__
                for a in list_actors(address=self.dashboard_url, filters=filters,
                                     detail=detail, raise_on_missing_output=False)]


@contextlib.contextmanager
def start_ray_cluster(num_cpus: int = 2, num_gpus: int = 0) -> Iterator[RayCluster]:
    """Start a head as in the module docstring; stop it (this cluster only) on exit."""
    if not Path(RAY_CLI).exists():
        pytest.skip(f"no ray CLI next to {sys.executable}")
    temp_dir = Path(tempfile.mkdtemp(prefix="cj-ray-", dir="/tmp"))  # short: socket paths
    (gcs, dash, client, node_mgr, obj_mgr, agent_http, agent_grpc, env_agent, metrics,
     workers) = free_ports(10, span=50)
    args = [
        RAY_CLI, "start", "--head", "--num-cpus", str(num_cpus), "--num-gpus", str(num_gpus),
        "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1",
        "--dashboard-port", str(dash), "--ray-client-server-port", str(client),
        "--node-manager-port", str(node_mgr), "--object-manager-port", str(obj_mgr),
        "--dashboard-agent-listen-port", str(agent_http),
        "--dashboard-agent-grpc-port", str(agent_grpc),
        "--runtime-env-agent-port", str(env_agent), "--metrics-export-port", str(metrics),
        "--min-worker-port", str(workers), "--max-worker-port", str(workers + 49),
        "--object-store-memory", str(100 * 2**20), "--temp-dir", str(temp_dir),
        "--disable-usage-stats", "--log-style", "record",
    ]
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, **AUTH_ENV, "PATH": f"{bin_dir}:{os.environ.get('PATH', '')}",
           "RAY_USAGE_STATS_ENABLED": "0"}
    env.pop("RAY_ADDRESS", None)
    saved = {k: os.environ.get(k) for k in AUTH_ENV}
    os.environ.update(AUTH_ENV)  # for the job and state SDK calls made in this process
    # cwd = the checkout: a job's working directory is the one `ray start --head` ran in
    proc = subprocess.Popen(args, cwd=REPO_ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True)
    try:
        try:
            out, _ = proc.communicate(timeout=START_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"ray start took over {START_TIMEOUT_S} s:\n{out[-3000:]}")
        if proc.returncode != 0:
            pytest.fail(f"ray start failed ({proc.returncode}):\n{out[-3000:]}")
        gcs_address = (temp_dir / "ray_current_cluster").read_text().strip()
        yield RayCluster(gcs_address, f"http://127.0.0.1:{dash}", temp_dir, proc.pid, num_gpus)
    finally:
        kill_session(proc.pid)
        shutil.rmtree(temp_dir, ignore_errors=True)
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


@pytest.fixture(scope="session")
def ray_cluster() -> Iterator[RayCluster]:
    """A 2-CPU Ray head for the whole session (see module docstring)."""
    with start_ray_cluster(num_cpus=2) as cluster:
        yield cluster


@pytest.fixture
def ray_gpu_cluster(request) -> Iterator[RayCluster]:
    """A Ray head with 2 CPUs and 2 fake GPUs, for one test (it may run beside the session's
    CPU cluster: their ports and temp dirs differ)."""
    with start_ray_cluster(num_cpus=2, num_gpus=2) as cluster:
        yield cluster
