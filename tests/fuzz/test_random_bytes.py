"""Random bytes to every method of every service, through generic calls that send the bytes as is.

The methods come from the services' protobuf descriptors, so a new RPC is fuzzed without a change
here. Bytes that are no valid request message must be INVALID_ARGUMENT naming the message type
(grpc.aio alone answers UNKNOWN with the parser's exception text for unary requests, and a stream
handler sees the parse error as an exception); bytes that happen to parse may get any answer but
INTERNAL or UNKNOWN. No call may hang: each has a deadline, and only the watch streams, which stay
open by design, may reach it.
"""

from __future__ import annotations

import time

import grpc
import pytest
from google.protobuf.descriptor import MethodDescriptor
from google.protobuf.message import DecodeError
from google.protobuf.message_factory import GetMessageClass
from grpc import aio
from grpc_health.v1 import health_pb2
from hypothesis import given
from hypothesis import strategies as st

from ortserve.api.inference import grpc_service_pb2
from ortserve.api.v1 import inference_service_pb2, registry_service_pb2
from tests.fuzz.server import FuzzServer, budget, outcome
from tests.fuzz.strategies import request_bytes

pytestmark = pytest.mark.asyncio(loop_scope="module")

SERVICES = [
    inference_service_pb2.DESCRIPTOR.services_by_name["InferenceService"],
    registry_service_pb2.DESCRIPTOR.services_by_name["RegistryService"],
    grpc_service_pb2.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
]
METHODS = [method for service in SERVICES for method in service.methods]
CALL_TIMEOUT_S = 5.0
# Server streams that stay open while nothing happens: a short deadline ends them.
WATCHES = {"/ortserve.api.v1.RegistryService/WatchModels", "/grpc.health.v1.Health/Watch"}
WATCH_TIMEOUT_S = 0.3
EXAMPLES = 80  # per method
WATCH_EXAMPLES = 15


def path(method: MethodDescriptor) -> str:
    return f"/{method.containing_service.full_name}/{method.name}"


def parses(method: MethodDescriptor, payload: bytes) -> bool:
    try:
        GetMessageClass(method.input_type).FromString(payload)
    except DecodeError:
        return False
    return True


async def call_with_bytes(channel: aio.Channel, method: MethodDescriptor, messages: list[bytes]) -> None:
    """One call of `method` sending `messages` unserialized; raises AioRpcError unless it ends OK.

    A bidirectional stream is read to its end; a server stream (a watch) until its first answer,
    then cancelled: it answered.
    """
    full = path(method)
    timeout = WATCH_TIMEOUT_S if full in WATCHES else CALL_TIMEOUT_S
    if not method.server_streaming:
        if method.client_streaming:
            await channel.stream_unary(full)(iter(messages), timeout=timeout)
        else:
            await channel.unary_unary(full)(messages[0], timeout=timeout)
        return
    if method.client_streaming:
        stream = channel.stream_stream(full)(iter(messages), timeout=timeout)
        assert len([answer async for answer in stream]) <= len(messages)
        return
    call = channel.unary_stream(full)(messages[0], timeout=timeout)
    async for _ in call:
        call.cancel()
        return


def requests_for(method: MethodDescriptor) -> st.SearchStrategy[list[bytes]]:
    """One message, or 1-3 for a client stream: random bytes, or a (damaged) random request."""
    payloads = request_bytes(method.input_type)
    if method.client_streaming:
        return st.lists(payloads, min_size=1, max_size=3)
    return payloads.map(lambda payload: [payload])


@pytest.mark.parametrize("method", [m for m in METHODS if path(m) not in WATCHES], ids=path)
@budget(EXAMPLES)
@given(data=st.data())
async def test_random_bytes(healthy_after: FuzzServer, method: MethodDescriptor, data: st.DataObject) -> None:
    await one_call(healthy_after, method, data.draw(requests_for(method), label="messages"))


@pytest.mark.parametrize("method", [m for m in METHODS if path(m) in WATCHES], ids=path)
@budget(WATCH_EXAMPLES)
@given(data=st.data())
async def test_random_bytes_to_watches(
    healthy_after: FuzzServer, method: MethodDescriptor, data: st.DataObject
) -> None:
    await one_call(healthy_after, method, data.draw(requests_for(method), label="messages"))


async def one_call(server: FuzzServer, method: MethodDescriptor, messages: list[bytes]) -> None:
    full = path(method)
    start = time.monotonic()
    try:
        await call_with_bytes(server.channel, method, messages)
    except aio.AioRpcError as error:
        elapsed = time.monotonic() - start
        hit_deadline = (
            error.code() is grpc.StatusCode.DEADLINE_EXCEEDED and error.details() == "Deadline Exceeded"
        )
        if hit_deadline and full in WATCHES:
            await server.count(f"bytes {full}", "open until the deadline")
            return
        assert not hit_deadline, f"{full} did not answer within {elapsed:.1f} s"
        server.assert_clean_error(error, full)
        if not parses(method, messages[0]) and outcome(error) != "CLIENT_WRITE_RACE":
            assert error.code() is grpc.StatusCode.INVALID_ARGUMENT, (error.code(), error.details())
            assert method.input_type.name in (error.details() or ""), error.details()
        await server.count(f"bytes {full}", outcome(error))
        return
    assert all(parses(method, m) for m in messages), f"{full} accepted bytes that are no request"
    await server.count(f"bytes {full}", "OK")
