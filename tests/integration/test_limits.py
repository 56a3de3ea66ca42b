"""Overload limits on a real server: concurrent RPCs, streams per connection, request bytes, upload
size, and keepalive enforcement. After each refusal a good request must still succeed."""

from __future__ import annotations

import asyncio
import hashlib
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.inference import grpc_service_pb2 as oip
from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.config import ServerConfig
from ortserve.errors import InvalidInput
from ortserve.server.app import OrtServer
from tests import onnx_models
from tests.integration.conftest import expect_error
from tests.integration.test_predict import request, upload
from tests.integration.test_security import started
from tests.server_calls import upload as upload_blocking

RESOURCE_EXHAUSTED = grpc.StatusCode.RESOURCE_EXHAUSTED
ROW_BYTES = 16 * 4  # the linear model takes x FP32 [N, 16]
WAIT_S = 10.0


@asynccontextmanager
async def serving(tmp_path: Path, **config: Any) -> AsyncIterator[tuple[OrtServer, str]]:
    server = await started(tmp_path, **config)
    try:
        yield server, f"127.0.0.1:{server.port}"
    finally:
        await server.stop(0)


def own_channel(address: str, *options: tuple[str, int]) -> aio.Channel:
    """A channel on a connection of its own (channels otherwise share one per target)."""
    return aio.insecure_channel(address, options=[("grpc.use_local_subchannel_pool", 1), *options])


def rows(n: int) -> ipb.PredictRequest:
    return request(np.ones((n, 16), np.float32))


async def predict_ok(channel: aio.Channel) -> None:
    response = await ipb_grpc.InferenceServiceStub(channel).Predict(rows(1), timeout=WAIT_S)
    assert response.model_version == 1


async def eventually(attempt: Callable[[], Awaitable[None]], what: str) -> None:
    """Retry `attempt` until it succeeds, for at most WAIT_S seconds."""
    deadline = asyncio.get_running_loop().time() + WAIT_S
    while True:
        try:
            await attempt()
            return
        except aio.AioRpcError as exc:
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"{what}: still failing after {WAIT_S} s: {exc.code()}") from exc
            await asyncio.sleep(0.05)


async def open_stream(stub: ipb_grpc.InferenceServiceStub) -> Any:
    """A PredictStream that has answered one message, so it holds an RPC on the server."""
    stream = stub.PredictStream()
    await stream.write(ipb.PredictStreamRequest(id="1", request=rows(1)))
    answer = await stream.read()
    assert answer.id == "1" and answer.response.model_version == 1
    return stream


async def close_stream(stream: Any) -> None:
    await stream.done_writing()
    assert await stream.read() is aio.EOF
    assert await stream.code() == grpc.StatusCode.OK


async def test_concurrent_rpcs_beyond_the_limit_are_refused(tmp_path: Path) -> None:
    async with serving(tmp_path, max_concurrent_rpcs=2) as (_, address), own_channel(address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        streams = [await open_stream(stub) for _ in range(2)]
        await expect_error(stub.Predict(rows(1)), RESOURCE_EXHAUSTED, "Concurrent RPC limit exceeded")
        await close_stream(streams[0])
        await eventually(lambda: predict_ok(channel), "a call after a stream closed")
        await close_stream(streams[1])


async def test_streams_per_connection_queue_on_the_client(tmp_path: Path) -> None:
    async with (
        serving(tmp_path, max_concurrent_streams=2) as (_, address),
        own_channel(address) as channel,
        own_channel(address) as other,
    ):
        await predict_ok(channel)  # the connection is up and has the server's SETTINGS
        stub = ipb_grpc.InferenceServiceStub(channel)
        streams = [await open_stream(stub) for _ in range(2)]
        third = asyncio.create_task(open_stream(stub))
        done, _ = await asyncio.wait({third}, timeout=0.5)
        assert not done, "a third stream ran on a connection limited to 2"
        await predict_ok(other)  # the limit is per connection
        await close_stream(streams[0])
        await close_stream(await asyncio.wait_for(third, WAIT_S))
        await close_stream(streams[1])


async def test_request_bytes_above_the_limit_are_refused_naming_model_size_and_limit(tmp_path: Path) -> None:
    limit = 64 * ROW_BYTES
    async with serving(tmp_path, max_request_bytes=limit) as (_, address), own_channel(address) as channel:
        stub = ipb_grpc.InferenceServiceStub(channel)
        text = (
            f"request for model 'linear' has {limit + ROW_BYTES} bytes of input tensors; the limit is {limit}"
        )
        await expect_error(stub.Predict(rows(65)), RESOURCE_EXHAUSTED, text)
        infer = oip.ModelInferRequest(model_name="linear")
        infer.inputs.add(name="x", datatype="FP32", shape=[65, 16])
        infer.raw_input_contents.append(np.ones((65, 16), np.float32).tobytes())
        await expect_error(
            oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer), RESOURCE_EXHAUSTED, text
        )
        response = await stub.Predict(rows(64))
        assert response.outputs[0].shape == [64, 4]


async def versions_of(registry: rpb_grpc.RegistryServiceStub) -> list[tuple[str, int]]:
    listed = await registry.ListModels(rpb.ListModelsRequest())
    return sorted((m.name, v.version) for m in listed.models for v in m.versions)


def stored_files(server: OrtServer) -> list[Path]:
    return sorted(p for p in server.config.store_dir.rglob("*") if p.is_file())


async def test_uploads_beyond_the_limit_or_the_manifest_leave_no_version(tmp_path: Path) -> None:
    data = onnx_models.linear(seed=7)
    async with (
        serving(tmp_path, max_model_bytes=len(data)) as (server, address),
        own_channel(address) as channel,
    ):
        registry = rpb_grpc.RegistryServiceStub(channel)
        before, files = await versions_of(registry), stored_files(server)
        too_big = upload(data + b"\0", name="linear")
        await expect_error(
            upload_blocking(address, too_big),
            RESOURCE_EXHAUSTED,
            f"model of {len(data) + 1} bytes exceeds the limit of {len(data)} bytes",
        )
        more_than_declared = [*upload(data, name="linear"), rpb.RegisterModelRequest(chunk=b"extra")]
        await expect_error(
            upload_blocking(address, more_than_declared),
            grpc.StatusCode.INVALID_ARGUMENT,
            f"received more than the {len(data)} bytes the manifest declared ({len(data) + 5} so far)",
        )
        assert await versions_of(registry) == before == [("linear", 1)]
        assert stored_files(server) == files
        good = upload(data, name="linear")
        assert (await registry.RegisterModel(iter(good))).version.version == 2
        assert hashlib.sha256(data).hexdigest() in {p.stem for p in stored_files(server)}


async def leaves_ready(channel: aio.Channel, within_s: float) -> bool:
    """Whether the channel leaves READY within `within_s` seconds."""
    try:
        await asyncio.wait_for(channel.wait_for_state_change(grpc.ChannelConnectivity.READY), within_s)
    except TimeoutError:
        return False
    return True


# gRPC clients ping at most once a second, whatever they ask for.
PINGING = (
    ("grpc.keepalive_time_ms", 1000),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
)


async def test_a_client_that_pings_too_often_gets_goaway(tmp_path: Path) -> None:
    """By default a ping without calls is a strike and the third strike closes the connection (~3 s);
    a server set to permit them keeps the same client for longer: the settings reach gRPC."""
    permissive = {"keepalive_permit_without_calls": True, "min_ping_interval_without_data_ms": 0}
    async with (
        serving(tmp_path / "strict") as (_, strict),
        serving(tmp_path / "permissive", **permissive) as (_, lenient),
        own_channel(strict, *PINGING) as abusive,
        own_channel(lenient, *PINGING) as tolerated,
        own_channel(strict) as normal,
    ):
        for channel in (abusive, tolerated, normal):
            await predict_ok(channel)
        closed, kept = await asyncio.gather(leaves_ready(abusive, WAIT_S), leaves_ready(tolerated, 5.0))
        assert closed, "the pinging client kept its connection"
        assert not kept, "the server closed a client whose pings it was set to permit"
        assert abusive.get_state() is not grpc.ChannelConnectivity.READY
        await predict_ok(normal)
        assert normal.get_state() is grpc.ChannelConnectivity.READY
        await predict_ok(tolerated)


@pytest.mark.parametrize(
    ("setting", "value", "message"),
    [
        ("max_concurrent_rpcs", -1, "max_concurrent_rpcs must be in 0..2147483647, got -1"),
        ("keepalive_time_ms", 10, "keepalive_time_ms must be in 1000..2147483647, got 10"),
        ("max_request_bytes", 2**41, f"max_request_bytes must be in 0..{2**40}, got {2**41}"),
    ],
)
def test_limits_are_validated_naming_the_value(setting: str, value: int, message: str) -> None:
    with pytest.raises(InvalidInput, match=f"^{re.escape(message)}$"):
        ServerConfig(**{setting: value})
