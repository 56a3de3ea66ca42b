"""The registry's PostgreSQL stops (`pg_ctl stop -m immediate`) under 32 callers: inference on the
loaded model goes on with zero failures, management calls answer UNAVAILABLE naming the registry
with no driver text, and once the database is back the same server recovers without a restart."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import pytest
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.client import to_tensor
from ortserve.registry.db import make_engine
from ortserve.registry.service import Registry
from ortserve.store.file import FileStore
from tests import onnx_models
from tests.faults import postgres
from tests.integration.processes import start_server
from tests.server_calls import MODEL, X, chunks, manifest, upload

pytestmark = pytest.mark.skipif(bool(postgres.missing()), reason=postgres.missing() or "-")

CALLERS = 32
# Successful calls the load must reach in each phase; at ~1,000 calls/s on two cores, ~1-2 s each.
WARM_CALLS_EACH = 5
OUTAGE_CALLS = 1000
RECOVERED_CALLS = 500
WAIT_S = 30.0
# Fragments of what psycopg, SQLAlchemy or the socket layer would say.
DRIVER_TEXT = (
    "psycopg",
    "sqlalchemy",
    "sqlalche.me",
    "operationalerror",
    "connection refused",
    "connection failed",
    "server closed the connection",
    "terminating connection",
    "127.0.0.1",
)


@pytest.fixture
def cluster() -> Iterator[postgres.Cluster]:
    cluster = postgres.Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        cluster.destroy()


@dataclass
class Load:
    """CALLERS tasks calling Predict back to back until `stop` (or WAIT_S), counting answers."""

    inference: ipb_grpc.InferenceServiceStub
    expected: ipb.PredictResponse
    ok: list[int] = field(default_factory=lambda: [0] * CALLERS)
    failures: list[str] = field(default_factory=list)
    stopping: asyncio.Event = field(default_factory=asyncio.Event)
    tasks: list[asyncio.Task[None]] = field(default_factory=list)

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._call(i)) for i in range(CALLERS)]

    @property
    def total(self) -> int:
        return sum(self.ok)

    async def _call(self, index: int) -> None:
        request = ipb.PredictRequest(model=MODEL, inputs=[to_tensor("x", X)])
        ends = time.monotonic() + 2 * WAIT_S
        while not self.stopping.is_set() and time.monotonic() < ends:
            try:
                answer = await self.inference.Predict(request, timeout=10)
            except aio.AioRpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
                continue
            if answer.model_version != self.expected.model_version or answer.outputs != self.expected.outputs:
                self.failures.append(f"wrong answer from version {answer.model_version}")
            self.ok[index] += 1

    async def until(self, done: Callable[[], bool], what: str) -> None:
        deadline = time.monotonic() + WAIT_S
        while not done():
            assert time.monotonic() < deadline, f"the load never reached: {what} ({self.ok})"
            assert not any(t.done() for t in self.tasks), "a caller stopped"
            await asyncio.sleep(0.01)

    async def stop(self) -> None:
        self.stopping.set()
        await asyncio.gather(*self.tasks)


def register_requests(path: Path) -> Iterator[rpb.RegisterModelRequest]:
    yield manifest(path)
    yield from chunks(path)


def management_calls(
    registry: rpb_grpc.RegistryServiceStub, address: str, model_path: Path
) -> dict[str, Callable[[], Awaitable[object]]]:
    return {
        "ListModels": lambda: registry.ListModels(rpb.ListModelsRequest(), timeout=10),
        "GetModel": lambda: registry.GetModel(rpb.GetModelRequest(name=MODEL), timeout=10),
        "RegisterModel": lambda: upload(address, register_requests(model_path)),
        "SetAlias": lambda: registry.SetAlias(
            rpb.SetAliasRequest(name=MODEL, alias="production", version=1), timeout=30
        ),
    }


def check_unavailable(rpc: str, error: aio.AioRpcError, port: int) -> str:
    """UNAVAILABLE naming the registry, with no driver text; returns the message."""
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAVAILABLE, f"{rpc}: {error.code().name}: {details}"
    assert "registry" in details, f"{rpc}: the message does not name the registry: {details!r}"
    lowered = details.lower()
    leaked = [text for text in (*DRIVER_TEXT, str(port)) if text in lowered]
    assert not leaked, f"{rpc}: driver text {leaked} reached the caller: {details!r}"
    return details


async def test_database_outage_under_load_keeps_inference_and_recovers_management(
    cluster: postgres.Cluster, tmp_path: Path
) -> None:
    config = tmp_path / "ortserve.toml"
    config.write_text("[server]\npoll_interval_s = 0.2\n")
    data = tmp_path / "data"
    paths = [tmp_path / "v1.onnx", tmp_path / "v2.onnx"]
    onnx_models.linear(paths[0], seed=1)
    onnx_models.linear(paths[1], seed=2)
    flags = ("--data-dir", str(data), "--db", cluster.url, "--config", str(config))
    server = start_server(tmp_path, "pg", *flags)
    try:
        async with aio.insecure_channel(server.address) as channel:
            inference = ipb_grpc.InferenceServiceStub(channel)
            registry = rpb_grpc.RegistryServiceStub(channel)
            first = (await registry.RegisterModel(register_requests(paths[0]), timeout=60)).version
            assert (first.version, first.state) == (1, mpb.VERSION_STATE_READY), first
            expected = await inference.Predict(ipb.PredictRequest(model=MODEL, inputs=[to_tensor("x", X)]))
            load = Load(inference, expected)
            load.start()
            try:
                await load.until(lambda: min(load.ok) >= WARM_CALLS_EACH, "every caller answered")

                await asyncio.to_thread(cluster.stop, "immediate")
                during = load.total
                messages = []
                for rpc, call in management_calls(registry, server.address, paths[1]).items():
                    with pytest.raises(aio.AioRpcError) as info:
                        await call()
                    messages.append(check_unavailable(rpc, info.value, cluster.port))
                await load.until(lambda: load.total >= during + OUTAGE_CALLS, "calls during the outage")
                outage = load.total - during

                await asyncio.to_thread(cluster.start)
                after = load.total
                listed = await registry.ListModels(rpb.ListModelsRequest(), timeout=10)
                assert [m.name for m in listed.models] == [MODEL]
                shown = await registry.GetModel(rpb.GetModelRequest(name=MODEL), timeout=10)
                assert [v.version for v in shown.model.versions] == [1]  # the failed upload left none
                alias = rpb.SetAliasRequest(name=MODEL, alias="production", version=1)
                assert (await registry.SetAlias(alias, timeout=30)).alias.version == 1
                second = (await registry.RegisterModel(register_requests(paths[1]), timeout=60)).version
                assert (second.version, second.state) == (2, mpb.VERSION_STATE_READY), second
                await load.until(lambda: load.total >= after + RECOVERED_CALLS, "calls after the outage")
            finally:
                await load.stop()
            assert load.failures == [], load.failures[:5]
            print(f"{load.total} Predict calls by {CALLERS} callers, {outage} while the database was down")

            # The poller converges again: a change made through another engine reaches this server.
            await asyncio.to_thread(_promote_elsewhere, cluster.url, data, 2)
            await _wait_for_version(inference, 2)
        _details_are_logged(messages, server.log.read_text(errors="replace"))
    finally:
        server.stop()


def _promote_elsewhere(url: str, data: Path, version: int) -> None:
    engine = make_engine(url)
    try:
        registry = Registry(engine, FileStore(data / "store"), max_model_bytes=1 << 30)
        registry.set_alias(MODEL, "production", version, actor="another-process", action="promote")
    finally:
        engine.dispose()


async def _wait_for_version(inference: ipb_grpc.InferenceServiceStub, version: int) -> None:
    request = ipb.PredictRequest(model=MODEL, inputs=[to_tensor("x", X)])
    deadline = time.monotonic() + WAIT_S
    while (answer := await inference.Predict(request, timeout=10)).model_version != version:
        assert time.monotonic() < deadline, f"still served by version {answer.model_version}"
        await asyncio.sleep(0.02)


def _details_are_logged(messages: list[str], log: str) -> None:
    """A message's correlation id, when it has one, leads to the server's log line with the detail."""
    for message in messages:
        found = re.search(r"correlation id (\w+)", message)
        if found:
            assert found.group(1) in log, f"correlation id of {message!r} is not in the server log"
