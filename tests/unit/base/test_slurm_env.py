"""The SLURM job variables, read in one place (cejobs.slurm_env)."""

from cejobs.slurm_env import SlurmEnv, current_job, submission_env

TASK_ENV = {"SLURM_JOB_ID": "1042", "SLURM_ARRAY_JOB_ID": "1040", "SLURM_ARRAY_TASK_ID": "2",
            "SLURM_RESTART_COUNT": "3", "SLURM_CPUS_PER_TASK": "8", "SLURM_JOB_NAME": "gen",
            "SLURM_JOB_PARTITION": "gpu", "SLURM_SUBMIT_DIR": "/home/u", "SLURM_CONF": "/etc/s",
            "PATH": "/bin"}


def test_an_array_task_reads_its_identity():
    job = current_job(TASK_ENV)
    assert job == SlurmEnv(job_id="1042", array_job_id="1040", array_task_id="2",
                           restart_count=3, cpus_per_task=8, name="gen", partition="gpu",
                           submit_dir="/home/u")
    assert (job.array, job.task) == ("1040", "1040_2")


def test_outside_a_job_every_field_is_unset():
    job = current_job({"PATH": "/bin", "SLURM_CPUS_PER_TASK": "0"})
    assert job == SlurmEnv() and (job.array, job.task, job.cpus_per_task) == (None, None, None)
    plain = current_job({"SLURM_JOB_ID": "7"})
    assert (plain.array, plain.task) == ("7", None)


def test_a_submission_from_a_task_drops_its_identity():
    assert submission_env(TASK_ENV) == {"SLURM_CONF": "/etc/s", "PATH": "/bin"}
