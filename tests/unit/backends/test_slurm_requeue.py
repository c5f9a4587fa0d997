"""The one requeue path of SLURM array tasks (sbatch and submitit): its limit, and what the
submitit array pickles. The requeue itself runs on the real cluster in tests/test_slurm.py."""

from __future__ import annotations

import pickle

from cejobs.backends.slurm import ClaimLoopJob, SlurmBackend
from cejobs.backends.slurm.requeue import requeue_self
from cejobs.jobs.config import GenerateConfig
from cejobs.jobs.kinds import KINDS
from cejobs.jobs.tasks import ShardTask


def test_the_backend_passes_its_requeue_limit_to_each_task(tmp_path):
    config = GenerateConfig(slurm_max_timeouts=7, max_retries=2)
    backend = SlurmBackend.from_config(config)
    assert (backend.max_timeouts, backend.max_retries) == (7, 2)
    job = ClaimLoopJob(ShardTask(KINDS["generate"], str(tmp_path), config), "run-1", 60.0,
                       backend.max_timeouts)
    again = pickle.loads(pickle.dumps(job))  # what a requeued task runs again
    assert (again.task.config, again.run, again.lease_s, again.max_requeues) == (
        config, "run-1", 60.0, 7)


def test_no_requeue_outside_a_job_or_past_the_limit(monkeypatch, capsys):
    for name in ("SLURM_JOB_ID", "SLURM_ARRAY_JOB_ID", "SLURM_ARRAY_TASK_ID"):
        monkeypatch.delenv(name, raising=False)
    assert requeue_self() is False
    assert "not in a SLURM job" in capsys.readouterr().err
    # at the limit, scontrol is not run (there is none on PATH here: it would fail otherwise)
    monkeypatch.setenv("SLURM_JOB_ID", "1042")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "7")
    monkeypatch.setenv("PATH", "")
    assert requeue_self(max_requeues=7) is False
    assert "requeued 7 time(s), the most allowed" in capsys.readouterr().err
