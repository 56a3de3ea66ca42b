"""Derivations and profiles run on threads of their own, at most max_toolkit_jobs at once."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import grpc
import pytest

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from tests.integration.conftest import Running, expect_error

BASIC = mpb.DerivationRecipe(optimize=mpb.OptimizeRecipe(level="basic"))
LIMIT = 2  # ServerConfig's default max_toolkit_jobs


def derive() -> rpb.DeriveModelVersionRequest:
    return rpb.DeriveModelVersionRequest(model="linear", version=1, recipe=BASIC)


async def test_jobs_over_the_limit_are_refused_while_reads_still_answer(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = running.server.parts.control.registry
    entered, release = threading.Semaphore(0), threading.Event()
    real = registry.derive

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.release()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "derive", held)
    calls = [asyncio.ensure_future(running.registry.DeriveModelVersion(derive())) for _ in range(LIMIT)]
    try:
        for _ in range(LIMIT):
            assert await asyncio.to_thread(entered.acquire, True, 30)
        # Before the limit, a third job took one more of the default executor's threads and waited.
        profile = rpb.ProfileModelVersionRequest(model="linear", version=1)
        for call in [
            running.registry.DeriveModelVersion(derive(), timeout=10),
            running.registry.ProfileModelVersion(profile, timeout=10),
        ]:
            await expect_error(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "2 derivation or profile jobs")
        shown = await running.registry.GetModelVersion(
            rpb.GetModelVersionRequest(name="linear", version=1), timeout=10
        )
        assert shown.version.version == 1
    finally:
        release.set()
    made = sorted(answer.version.version for answer in await asyncio.gather(*calls))
    assert made == [2, 3]
    listed = await running.registry.ListModelVersions(rpb.ListModelVersionsRequest(name="linear"))
    assert len(listed.versions) == 3  # the refused one registered nothing
    profiled = await running.registry.ProfileModelVersion(
        rpb.ProfileModelVersionRequest(model="linear", version=1, runs=1)
    )
    assert profiled.operators  # the slots are free again


STOPPING = """
import asyncio, sys, threading
from grpc import aio
from ortserve.api.v1 import model_pb2 as mpb, registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models
from pathlib import Path

async def main() -> None:
    data = Path(sys.argv[1])
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(data)))
    registry = server.parts.control.registry
    onnx_models.linear(data.parent / "linear.onnx")
    registry.register_file(data.parent / "linear.onnx", "linear")
    entered = threading.Event()

    def endless(*args, **kwargs):
        entered.set()
        threading.Event().wait()  # a job that outlives the server

    registry.derive = endless
    port = await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        recipe = mpb.DerivationRecipe(optimize=mpb.OptimizeRecipe(level="basic"))
        request = rpb.DeriveModelVersionRequest(model="linear", version=1, recipe=recipe)
        call = rpb_grpc.RegistryServiceStub(channel).DeriveModelVersion(request)
        assert await asyncio.to_thread(entered.wait, 30)
        await server.stop(0)
        call.cancel()
    print("stopped", flush=True)

asyncio.run(main())
"""


def test_a_stopping_server_does_not_wait_for_a_running_job(tmp_path: Path) -> None:
    # Job threads from a ThreadPoolExecutor are joined at interpreter exit: the process hung until
    # the job ended (up to its 10 minutes).
    done = subprocess.run(
        [sys.executable, "-c", STOPPING, str(tmp_path / "data")], capture_output=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr.decode()[-2000:]
    assert b"stopped" in done.stdout
