"""pytest fixtures for a real S3-compatible server: moto's, started on 127.0.0.1 by the tests.

Loaded through ``pytest_plugins`` in tests/conftest.py.

- ``s3`` (session scope): a moto server on a free port of 127.0.0.1 that checks request
  signatures (``INITIAL_NO_AUTH_ACTION_COUNT=3``: the fixture's first three IAM calls create a
  user, its S3 policy and its access key; every later request must be signed with that key),
  and a bucket. ``s3.env`` is the standard AWS environment a process needs to reach it
  (endpoint, key, region) and nothing else: no profile or config file of this machine, and no
  instance-metadata lookups, so no traffic leaves 127.0.0.1.

Teardown kills the server by its pid.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

BUCKET = "cejobs-test"
START_TIMEOUT_S = 120


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_for(port: int, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"moto server exited with {proc.returncode}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return
        except OSError:
            time.sleep(0.2)
    raise RuntimeError("moto server did not start")


@dataclass
class S3Server:
    endpoint: str
    key_id: str
    secret: str
    home: Path  # empty AWS config files live here

    @property
    def env(self) -> dict[str, str]:
        """The standard AWS variables of a process that uses this server, and no others."""
        return {"AWS_ENDPOINT_URL": self.endpoint, "AWS_ACCESS_KEY_ID": self.key_id,
                "AWS_SECRET_ACCESS_KEY": self.secret, "AWS_DEFAULT_REGION": "us-east-1",
                **isolated_aws_env(self.home)}

    def url(self, name: str, bucket: str = BUCKET) -> str:
        return f"s3://{bucket}/{name}"

    def client(self):
        import boto3

        return boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id=self.key_id,
                            aws_secret_access_key=self.secret, region_name="us-east-1")

    def objects(self, prefix: str = "") -> dict[str, bytes]:
        """Every object under `prefix` in the test bucket, with its bytes."""
        client, out = self.client(), {}
        for page in client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET,
                                                                      Prefix=prefix):
            for item in page.get("Contents", []):
                out[item["Key"]] = client.get_object(Bucket=BUCKET,
                                                     Key=item["Key"])["Body"].read()
        return out


def isolated_aws_env(home: Path) -> dict[str, str]:
    """No profile, config file or instance metadata of this machine."""
    return {"AWS_CONFIG_FILE": str(home / "config"),
            "AWS_SHARED_CREDENTIALS_FILE": str(home / "credentials"),
            "AWS_EC2_METADATA_DISABLED": "true", "AWS_PROFILE": "", "AWS_DEFAULT_PROFILE": ""}


def clean_env(extra: dict[str, str]) -> dict[str, str]:
    """os.environ without any AWS_* of this machine, plus `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("AWS_")}
    env.update({k: v for k, v in extra.items() if v})
    return env


@pytest.fixture(scope="session")
def s3(tmp_path_factory) -> S3Server:
    pytest.importorskip("moto")
    pytest.importorskip("s3fs")
    import boto3

    home = tmp_path_factory.mktemp("aws")
    port = free_port()
    log = open(home / "moto.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**clean_env({}), "INITIAL_NO_AUTH_ACTION_COUNT": "3"})
    try:
        _wait_for(port, proc)
        endpoint = f"http://127.0.0.1:{port}"
        iam = boto3.client("iam", endpoint_url=endpoint, aws_access_key_id="bootstrap",
                           aws_secret_access_key="bootstrap", region_name="us-east-1")
        iam.create_user(UserName="cejobs")
        iam.put_user_policy(UserName="cejobs", PolicyName="s3", PolicyDocument=json.dumps(
            {"Version": "2012-10-17",
             "Statement": [{"Effect": "Allow", "Action": "s3:*", "Resource": "*"}]}))
        key = iam.create_access_key(UserName="cejobs")["AccessKey"]
        server = S3Server(endpoint, key["AccessKeyId"], key["SecretAccessKey"], home)
        server.client().create_bucket(Bucket=BUCKET)
        yield server
    finally:
        proc.kill()
        proc.wait()
        log.close()


@pytest.fixture
def s3_env(s3, monkeypatch) -> S3Server:
    """`s3`, with its environment set in this process (for in-process API calls)."""
    for k in [k for k in os.environ if k.startswith("AWS_")]:
        monkeypatch.delenv(k)
    for k, v in s3.env.items():
        if v:
            monkeypatch.setenv(k, v)
    return s3
