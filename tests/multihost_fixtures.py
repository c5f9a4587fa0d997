"""pytest fixtures for multi-host tests: hosts as network namespaces (scripts/hosts.sh), a
multi-node SLURM on them (slurm/local/nodes.sh) and a Ray cluster across them.

- ``hosts`` (function scope): three hosts h0, h1, h2 on 10.213.7.0/24, in namespaces named
  ``cjt<pytest pid>-*``. Its finalizer runs ``hosts.sh down``, which kills every process in
  them (Ray, SLURM daemons and their jobs included) and deletes them. A session that crashed
  leaves sets whose owner pid is gone; ``hosts.sh prune`` (run first) removes them.
- ``slurm_nodes``: slurmctld on h0, slurmd n1 on h1 and n2 on h2 (1 CPU, 1 fake GPU each).
- ``ray_nodes``: a Ray head on h0 (no CPUs: it runs the driver only), a 1-CPU worker node on
  h1 and on h2; Ray's health checks are shortened so that a silent node is dead in seconds.

Everything runs as root (namespaces, SLURM daemons). When a prerequisite is missing the tests
skip with the reason, or fail when ``CEJOBS_REQUIRE_MULTIHOST=1`` (CI).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
HOSTS_SH = REPO / "scripts" / "hosts.sh"
NODES_SH = REPO / "slurm" / "local" / "nodes.sh"
RAY_CLI = str(Path(sys.executable).with_name("ray"))
AUTH_ENV = {"RAY_AUTH_MODE": "disabled"}  # on every ray command (ray_fixtures.py)
# A node that misses 3 checks 1 s apart is dead (Ray's defaults: 5 checks, 3 s apart).
HEALTH_ENV = {"RAY_health_check_period_ms": "1000", "RAY_health_check_failure_threshold": "3",
              "RAY_health_check_timeout_ms": "1000", "RAY_health_check_initial_delay_ms": "1000",
              "RAY_worker_niceness": "0"}


def _unavailable(reason: str) -> None:
    if os.environ.get("CEJOBS_REQUIRE_MULTIHOST") == "1":
        pytest.fail(f"CEJOBS_REQUIRE_MULTIHOST=1 but multi-host tests cannot run: {reason}",
                    pytrace=False)
    pytest.skip(f"multi-host tests cannot run: {reason}")


class Hosts:
    """The hosts of one `hosts.sh` set; `run`/`popen` run commands on a host."""

    def __init__(self, name: str):
        self.name = name
        self.env = {**os.environ, "CEJOBS_HOSTS_NAME": name}

    def sh(self, *args: str, timeout: float = 120, check: bool = True) -> str:
        r = subprocess.run(["bash", str(HOSTS_SH), *args], env=self.env, capture_output=True,
                           text=True, timeout=timeout)
        if check and r.returncode:
            raise RuntimeError(f"hosts.sh {' '.join(args)}: {r.stderr.strip()}")
        return r.stdout

    def addr(self, host: str) -> str:
        return self.sh("addr", host).strip()

    def command(self, host: str, args: Sequence[str],
                env: dict[str, str] | None = None) -> list[str]:
        extra = [f"{k}={v}" for k, v in (env or {}).items()]
        return ["bash", str(HOSTS_SH), "exec", host, "env", *extra, *map(str, args)]

    def run(self, host: str, args: Sequence[str], env: dict[str, str] | None = None,
            timeout: float = 300, check: bool = True,
            cwd: Path = REPO) -> subprocess.CompletedProcess:
        r = subprocess.run(self.command(host, args, env), env=self.env, cwd=cwd, text=True,
                           capture_output=True, timeout=timeout)
        if check and r.returncode:
            raise AssertionError(f"{' '.join(map(str, args))} on {host} exited {r.returncode}:\n"
                                 f"{r.stdout[-3000:]}\n{r.stderr[-3000:]}")
        return r

    def popen(self, host: str, args: Sequence[str], log: Path, env: dict[str, str] | None = None,
              cwd: Path = REPO) -> subprocess.Popen:
        out = open(log, "w")  # noqa: SIM115 - the process owns it
        return subprocess.Popen(self.command(host, args, env), env=self.env, cwd=cwd, text=True,
                                stdout=out, stderr=subprocess.STDOUT)

    def pids(self, host: str) -> set[int]:
        r = subprocess.run(["ip", "netns", "pids", f"{self.name}-{host}"], capture_output=True,
                           text=True)
        return {int(p) for p in r.stdout.split()}


@pytest.fixture
def hosts() -> Iterator[Hosts]:
    if os.geteuid() != 0:
        _unavailable("network namespaces need root")
    if shutil.which("ip") is None or shutil.which("nsenter") is None:
        _unavailable("iproute2 (ip) and util-linux (nsenter) are needed (scripts/test "
                     "installs iproute2)")
    h = Hosts(f"cjt{os.getpid()}")
    h.sh("prune")
    h.sh("down")  # an earlier test's leftovers, if its finalizer never ran
    try:
        h.sh("up", "3")
    except RuntimeError as e:
        _unavailable(str(e))
    try:
        yield h
    finally:
        h.sh("down", check=False)


class SlurmNodes:
    def __init__(self, hosts: Hosts, conf: str):
        self.hosts, self.conf = hosts, conf

    def client(self, args: Sequence[str], env: dict[str, str] | None = None, **kw):
        return self.hosts.run("h0", args, env={"SLURM_CONF": self.conf, **(env or {})}, **kw)

    def sbatch(self, args: Sequence[str], env: dict[str, str] | None = None) -> str:
        out = self.client(["sbatch", "--parsable", *args], env=env).stdout.strip()
        return out.splitlines()[-1].split(";")[0]

    def states(self, job: str) -> dict[str, str]:
        r = self.client(["scontrol", "-o", "show", "job", job], check=False)
        found = {}
        for line in r.stdout.splitlines():
            f = dict(re.findall(r"(\w+)=(\S*)", line))
            found[f.get("JobId", "?")] = f.get("JobState", "?")
        return found


@pytest.fixture
def slurm_nodes(hosts: Hosts) -> Iterator[SlurmNodes]:
    if shutil.which("slurmctld") is None:  # as the single-node fixture does: install it
        r = subprocess.run(["bash", str(REPO / "slurm" / "local" / "cluster.sh"), "install"],
                           capture_output=True, text=True, timeout=900)
        if r.returncode:
            _unavailable(f"slurm-wlm is not installed and `cluster.sh install` failed: "
                         f"{r.stderr.strip().splitlines()[-1:]}")
    r = subprocess.run(["bash", str(NODES_SH), "start"], env=hosts.env, capture_output=True,
                       text=True, timeout=180)
    if r.returncode:
        pytest.fail(f"nodes.sh start failed: {r.stderr[-2000:]}")
    conf = re.search(r"SLURM_CONF=(\S+)", subprocess.run(
        ["bash", str(NODES_SH), "env"], env=hosts.env, capture_output=True, text=True).stdout)[1]
    try:
        yield SlurmNodes(hosts, conf)
    finally:
        subprocess.run(["bash", str(NODES_SH), "stop"], env=hosts.env, capture_output=True,
                       timeout=120)


class RayNodes:
    def __init__(self, hosts: Hosts, head: str, temp: Path):
        self.hosts, self.head, self.temp = hosts, head, temp

    def submit(self, entrypoint: Sequence[str], log: Path,
               env_vars: dict[str, str]) -> subprocess.Popen:
        """`ray job submit` from h0 (the dashboard is on h0's 127.0.0.1), following the log."""
        import json

        runtime_env = {"env_vars": {"OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1", **env_vars}}
        return self.hosts.popen("h0", [RAY_CLI, "job", "submit", "--address",
                                       "http://127.0.0.1:8265", "--log-style", "record",
                                       "--runtime-env-json", json.dumps(runtime_env), "--",
                                       *entrypoint], log, env=AUTH_ENV)


@pytest.fixture
def ray_nodes(hosts: Hosts) -> Iterator[RayNodes]:
    if not Path(RAY_CLI).exists():
        _unavailable(f"no ray CLI next to {sys.executable}")
    temp = Path(tempfile.mkdtemp(prefix="cjr-", dir="/tmp"))  # short: Ray's socket paths
    head = f"{hosts.addr('h0')}:6379"
    env = {**AUTH_ENV, **HEALTH_ENV, "RAY_USAGE_STATS_ENABLED": "0",
           "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}"}
    common = ["--disable-usage-stats", "--log-style", "record", "--object-store-memory",
              str(80 * 2**20)]
    try:
        hosts.run("h0", [RAY_CLI, "start", "--head", "--node-ip-address", hosts.addr("h0"),
                         "--port", "6379", "--num-cpus", "0", "--dashboard-host", "127.0.0.1",
                         "--temp-dir", str(temp / "h0"), *common], env=env, timeout=240)
        for h in ("h1", "h2"):
            hosts.run(h, [RAY_CLI, "start", "--address", head, "--node-ip-address",
                          hosts.addr(h), "--num-cpus", "1", "--temp-dir", str(temp / h),
                          *common], env=env, timeout=240)
        yield RayNodes(hosts, head, temp)
    finally:
        hosts.sh("down", check=False)  # Ray's processes first: they hold files in temp
        shutil.rmtree(temp, ignore_errors=True)


def wait_for(predicate, timeout: float, what: str, interval: float = 0.3):
    """Poll `predicate` until it returns something true (a liveness bound, never a check)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(interval)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")
