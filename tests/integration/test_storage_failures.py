"""Every command, and the API, pointed at object storage that can't be used: one `error:` line
and exit status 2 (a StorageError in the API), never a client traceback. Two failures a user
meets: an endpoint where nothing listens (a closed port of 127.0.0.1), and credentials the
server refuses (moto checks request signatures: tests/s3_fixtures.py)."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO
from tests.integration.test_generate import gen_args
from tests.s3_fixtures import clean_env, free_port

COMMANDS = {
    "generate": lambda models, url: ["cejobs.generate", *gen_args(models, url)],
    "evaluate": lambda models, url: ["cejobs.evaluate", "--store", url, "--backend", "local",
                                     "--classifier", f"c={models['classifier']}"],
    "status": lambda models, url: ["cejobs.status", "--store", url],
    "status --verify": lambda models, url: ["cejobs.status", "--store", url, "--verify"],
}
FAILURES = {
    "dead endpoint": "cannot reach http://127.0.0.1:",
    "refused credentials": "the credentials were refused or are missing",
}


def failing_env(s3, failure: str) -> dict[str, str]:
    env = dict(s3.env, AWS_MAX_ATTEMPTS="1")
    if failure == "dead endpoint":
        env["AWS_ENDPOINT_URL"] = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    else:
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
    return env


@pytest.mark.parametrize("failure", FAILURES)
@pytest.mark.parametrize("command", COMMANDS)
def test_command_says_one_line(s3, tiny_models, command, failure):
    module, *args = COMMANDS[command](tiny_models, s3.url("failures/run.zarr"))
    r = subprocess.run([sys.executable, "-m", module, *map(str, args)], cwd=REPO, text=True,
                       capture_output=True, env=clean_env(failing_env(s3, failure)), timeout=300)
    assert r.returncode == 2, r.stderr
    assert r.stderr.startswith("error: ") and r.stderr.count("\n") == 1, r.stderr
    assert FAILURES[failure] in r.stderr and s3.secret not in r.stderr
    assert r.stdout == ""


@pytest.mark.parametrize("failure", FAILURES)
def test_open_store_raises_storage_error(s3, failure, monkeypatch):
    import s3fs

    from cejobs.drivers.api import open_store
    from cejobs.errors import StorageError

    for name, value in clean_env(failing_env(s3, failure)).items():
        monkeypatch.setenv(name, value)
    s3fs.S3FileSystem.clear_instance_cache()  # a filesystem made with other settings
    with pytest.raises(StorageError, match=FAILURES[failure]):
        open_store(s3.url("failures/run.zarr"))
    s3fs.S3FileSystem.clear_instance_cache()
