"""The control plane under faults: drains never hold the refresh lock, the poller survives any
exception, a retired version leaves no metric series, and bugs reach callers as INTERNAL with a
correlation id that the log line holding the exception carries too."""

from __future__ import annotations

import asyncio
import socket
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
import structlog
from grpc import aio
from prometheus_client import generate_latest

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.client.client import to_tensor
from ortserve.config import ServerConfig
from ortserve.records import VersionState
from ortserve.server.app import OrtServer
from tests import onnx_models

WAIT_S = 10.0


async def until(condition: Callable[[], bool], what: str) -> None:
    """Wait for `condition`, checking every few milliseconds, for at most WAIT_S."""
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[OrtServer]:
    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), poll_interval_s=0.05)
    server = OrtServer(config)
    registry = server.parts.control.registry
    for seed in (1, 2):
        path = tmp_path / f"v{seed}.onnx"
        onnx_models.linear(path, seed=seed)
        registry.register_file(path, "linear")
    registry.promote("linear", 1)
    await server.start()
    yield server
    await server.stop(0)


def request(version: str = "") -> ipb.PredictRequest:
    return ipb.PredictRequest(
        model="linear", version=version, inputs=[to_tensor("x", np.ones((1, 16), np.float32))]
    )


def series_of(server: OrtServer, version: int) -> list[str]:
    text = generate_latest(server.parts.metrics.registry).decode()
    return [line for line in text.splitlines() if f'version="{version}"' in line]


async def test_a_draining_version_holds_no_lock_and_leaves_no_metric_series(server: OrtServer) -> None:
    control = server.parts.control
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        assert (await stub.Predict(request("1"), timeout=10)).model_version == 1
    assert series_of(server, 1)
    await control.set_alias("linear", "production", 2, actor="test")
    slot = control.pool.slot("linear", 1)
    slot.enter()  # a request still in flight on version 1
    retiring = asyncio.create_task(control.retire("linear", 1, actor="test"))
    await until(lambda: slot.state is VersionState.RETIRED, "version 1 to stop taking traffic")
    # While version 1 drains, registry writes and refreshes go on.
    await asyncio.wait_for(control.set_alias("linear", "canary", 2, actor="test"), 5)
    assert not retiring.done()
    slot.leave()
    await asyncio.wait_for(retiring, 5)
    assert slot.session is None and slot.batcher is None
    assert series_of(server, 1) == []
    assert series_of(server, 2)


async def test_the_poller_survives_an_unexpected_exception(
    server: OrtServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    control = server.parts.control
    registry = control.registry
    real = registry.revision
    failures = iter([RuntimeError("a bug in a refresh"), KeyError("another")])

    def revision() -> int:
        failure = next(failures, None)
        if failure is not None:
            raise failure
        return real()

    monkeypatch.setattr(registry, "revision", revision)
    path = tmp_path / "v3.onnx"
    onnx_models.linear(path, seed=3)
    await asyncio.to_thread(registry.register_file, path, "linear")  # behind the control plane's back
    await until(lambda: len(control.pool.versions("linear")) == 3, "the poller to list version 3")
    counted = generate_latest(server.parts.metrics.registry).decode()
    assert 'ortserve_registry_poll_failures_total{error="RuntimeError"} 1.0' in counted
    assert 'ortserve_registry_poll_failures_total{error="KeyError"} 1.0' in counted


async def test_stopping_closes_the_metrics_port(tmp_path: Path) -> None:
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data")))
    await server.start()
    port = server.metrics_port
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass
    await server.stop(0)
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()


async def test_a_bug_answers_internal_with_a_correlation_id_and_logs_the_exception(
    server: OrtServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("secret detail at /srv/models/private.onnx")

    monkeypatch.setattr(server.parts.core, "predict", broken)
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        with structlog.testing.capture_logs() as logs:
            with pytest.raises(aio.AioRpcError) as unary:
                await stub.Predict(request(), timeout=10)
            stream = stub.PredictStream(iter([ipb.PredictStreamRequest(id="a", request=request())]))
            answers = [answer async for answer in stream]
    assert unary.value.code() is grpc.StatusCode.INTERNAL
    assert answers[0].error.code == grpc.StatusCode.INTERNAL.value[0]
    for text in (unary.value.details() or "", answers[0].error.message):
        assert text.startswith("internal error (correlation id ")
        assert "secret" not in text and "/srv" not in text
        correlation_id = text.split("correlation id ")[1][:16]
        logged = [e for e in logs if e.get("correlation_id") == correlation_id]
        assert len(logged) == 1 and logged[0]["log_level"] == "error"
        assert isinstance(logged[0]["exc_info"], RuntimeError)
