"""A real S3-protocol server (moto's server mode) on 127.0.0.1, started by the tests as a subprocess,
and a fresh bucket per test. Nothing here mocks the client: boto3 speaks HTTP to that server."""

from __future__ import annotations

import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from ortserve.store.s3 import s3_client

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

STARTUP_S = 30.0
CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
}


@dataclass
class S3Server:
    proc: subprocess.Popen[bytes]
    endpoint: str
    log: Path

    def client(self) -> S3Client:
        return s3_client(self.endpoint)

    def stop(self) -> None:
        """kill -9: the store is gone at once, mid-request or not."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(10)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def start_s3_server(workdir: Path) -> S3Server:
    """`python -m moto.server` on a free loopback port; returns once it accepts connections."""
    port = _free_port()
    log = workdir / f"moto-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    deadline = time.monotonic() + STARTUP_S
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise AssertionError(
                    f"moto did not start:\n{log.read_text(errors='replace')[-3000:]}"
                ) from None
            time.sleep(0.05)
    return S3Server(proc, f"http://127.0.0.1:{port}", log)


@pytest.fixture(scope="session")
def s3_env() -> Iterator[None]:
    """Credentials the standard way (AWS_* variables), no profile or instance metadata."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in CREDENTIALS.items():
            patch.setenv(name, value)
        for name in ("AWS_PROFILE", "AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN"):
            patch.delenv(name, raising=False)
        yield


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory, s3_env: None) -> Iterator[S3Server]:
    server = start_s3_server(tmp_path_factory.mktemp("s3"))
    yield server
    server.stop()


def new_bucket(server: S3Server) -> str:
    name = f"models-{uuid.uuid4().hex[:12]}"
    server.client().create_bucket(Bucket=name)
    return name


@pytest.fixture
def bucket(s3_server: S3Server) -> str:
    return new_bucket(s3_server)
