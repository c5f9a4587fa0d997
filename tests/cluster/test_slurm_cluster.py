"""The local single-node SLURM (slurm/local/cluster.sh) runs what our sbatch scripts need:
fake-GPU job arrays, signals delivered to batch scripts, and requeue."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.slurm_fixtures import SlurmCluster  # the fixture comes through conftest.py

pytestmark = pytest.mark.slurm


def _wait_for_file(path: Path, cluster: SlurmCluster, job_id: str, timeout: float = 240) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"{path} not written after {timeout}s; job {job_id}: {cluster.job_states(job_id)}")
        time.sleep(0.2)


def test_gpu_array_tasks_write_their_ids(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    work = tmp_path / "dir with spaces"
    work.mkdir()
    script = work / "task.sh"
    script.write_text(
        "#!/bin/bash\n"
        "set -euo pipefail\n"
        'echo "${SLURM_ARRAY_TASK_ID} ${CUDA_VISIBLE_DEVICES:-unset}" > "task_${SLURM_ARRAY_TASK_ID}.txt"\n'
    )
    job = slurm_cluster.sbatch(
        ["--array=0-2", "--gres=gpu:1", "--output=slurm-%A_%a.out", str(script)], cwd=work
    )
    states = slurm_cluster.wait(job, timeout=120)
    assert states == {f"{job}_{i}": "COMPLETED" for i in range(3)}
    for i in range(3):
        task_id, gpu = (work / f"task_{i}.txt").read_text().split()
        assert task_id == str(i)
        assert gpu in {"0", "1"}  # one of the two fake GPUs, through gres.conf File=


def test_usr2_reaches_trap_in_running_batch_script(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    script = tmp_path / "trap.sh"
    script.write_text(
        "#!/bin/bash\n"
        'trap \'echo "USR2 ${SLURM_JOB_ID}" > marker.txt; exit 0\' USR2\n'
        "touch ready.txt\n"
        "for _ in $(seq 120); do sleep 1 & wait $!; done\n"
        "echo timeout > marker.txt\n"
    )
    job = slurm_cluster.sbatch(["--output=slurm-%j.out", str(script)], cwd=tmp_path)
    _wait_for_file(tmp_path / "ready.txt", slurm_cluster, job)
    slurm_cluster.scancel("--signal=USR2", "--batch", job)
    assert slurm_cluster.wait(job, timeout=240) == {job: "COMPLETED"}
    assert (tmp_path / "marker.txt").read_text().split() == ["USR2", job]


def test_job_requeued_after_signal_runs_again(slurm_cluster: SlurmCluster, tmp_path: Path) -> None:
    # The preemption path of slurm/gen_ce.sh: trap the signal, requeue, continue on restart.
    script = tmp_path / "requeue.sh"
    script.write_text(
        "#!/bin/bash\n"
        'echo "run ${SLURM_RESTART_COUNT:-0}" >> runs.txt\n'
        'if [[ "${SLURM_RESTART_COUNT:-0}" == 0 ]]; then\n'
        '  trap \'scontrol requeue "${SLURM_JOB_ID}"; exit 0\' USR2\n'
        "  touch ready.txt\n"
        "  for _ in $(seq 120); do sleep 1 & wait $!; done\n"
        "fi\n"
    )
    job = slurm_cluster.sbatch(["--requeue", "--output=slurm-%j.out", str(script)], cwd=tmp_path)
    _wait_for_file(tmp_path / "ready.txt", slurm_cluster, job)
    slurm_cluster.scancel("--signal=USR2", "--batch", job)
    # A requeued job waits cred_expire (10 s in cluster.sh) before it may start again.
    deadline = time.monotonic() + 240
    while "run 1" not in (tmp_path / "runs.txt").read_text():
        assert time.monotonic() < deadline, f"job {job} did not run again: {slurm_cluster.job_states(job)}"
        time.sleep(0.5)
    assert slurm_cluster.wait(job, timeout=240) == {job: "COMPLETED"}
    assert (tmp_path / "runs.txt").read_text().splitlines() == ["run 0", "run 1"]
