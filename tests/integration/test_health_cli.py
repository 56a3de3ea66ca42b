"""`ortserve health` as a container probe runs it: a subprocess against a real server, judged by exit code."""

from __future__ import annotations

import asyncio
import socket
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.integration.conftest import Running
from tests.integration.test_security import started


@dataclass
class Probe:
    code: int
    stdout: str
    stderr: str
    seconds: float


async def health(*args: str) -> Probe:
    start = time.monotonic()
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "ortserve",
        "health",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return Probe(proc.returncode, out.decode().strip(), err.decode().strip(), time.monotonic() - start)


async def test_serving_unknown_model_draining_and_stopped(running: Running) -> None:
    address = running.address
    server, model, unknown = await asyncio.gather(
        health("--server", address),
        health("--server", address, "--model", "linear"),
        health("--server", address, "--model", "nope"),
    )
    assert (server.code, server.stdout) == (0, f"{address}: SERVING"), server
    assert (model.code, model.stdout) == (0, f"{address} model 'linear': SERVING"), model
    assert unknown.code == 1 and unknown.stdout == "", unknown
    assert (
        unknown.stderr
        == f"{address} model 'nope': unknown service (NOT_FOUND): no model of that name is loaded there"
    )

    await running.server.parts.health.shutting_down()  # what SIGTERM does first
    draining = await health("--server", address)
    assert (draining.code, draining.stdout) == (1, f"{address}: NOT_SERVING"), draining

    await running.server.stop(0)
    stopped = await health("--server", address)
    assert stopped.code == 1 and stopped.stdout == "", stopped
    assert stopped.stderr.startswith(f"{address}: unreachable (UNAVAILABLE: "), stopped
    assert stopped.seconds < 3.0, f"took {stopped.seconds:.2f} s, past the default --timeout of 3 s"


async def test_a_server_that_never_answers_fails_at_the_timeout() -> None:
    with socket.socket() as silent:  # accepts TCP connections (backlog) and never speaks HTTP/2
        silent.bind(("127.0.0.1", 0))
        silent.listen(8)
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        probe = await health("--server", address, "--timeout", "1")
    assert probe.code == 1, probe
    assert probe.stderr == f"{address}: no answer within 1 s (DEADLINE_EXCEEDED)", probe
    assert 1.0 <= probe.seconds < 4.0, probe


async def test_tls_flags(tmp_path: Path, pki: Path) -> None:
    server = await started(
        tmp_path, tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key")
    )
    try:
        address = f"localhost:{server.port}"
        tls, plaintext, half = await asyncio.gather(
            health("--server", address, "--tls-ca-file", str(pki / "ca.pem"), "--model", "linear"),
            health("--server", address, "--timeout", "2"),
            health("--server", address, "--tls-cert-file", str(pki / "client.pem")),
        )
    finally:
        await server.stop(0)
    assert (tls.code, tls.stdout) == (0, f"{address} model 'linear': SERVING"), tls
    assert plaintext.code == 1 and plaintext.stdout == "", plaintext
    assert half.code == 1, half
    assert (
        half.stderr == f"{address}: not checked: --tls-cert-file and --tls-key-file go together (mutual TLS)"
    )
