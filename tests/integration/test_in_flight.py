"""The server's count of unary inference calls: from gRPC's first sight of a call to its end.

Batchers read it to keep a request off the event loop while other calls wait (batcher.idle_inline);
a count that leaked upward would silently shut that path, one that leaked downward would let a
loaded server serialise its requests. Checked on a real server, for every way a call ends.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.inference import grpc_service_pb2 as opb
from ortserve.api.inference import grpc_service_pb2_grpc as opb_grpc
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.client.client import to_tensor
from ortserve.scheduler.in_flight import InFlight
from ortserve.scheduler.inference import InferenceCore
from tests.integration.conftest import Running, expect_error


def counter(running: Running) -> InFlight:
    in_flight = running.server.parts.core.pool.in_flight
    assert in_flight is not None
    return in_flight


async def settled(in_flight: InFlight, count: int) -> None:
    """Until the count is `count` (a call's end reaches it through its task's done callback)."""
    deadline = time.monotonic() + 10
    while in_flight.count != count:
        assert time.monotonic() < deadline, f"in-flight count stayed {in_flight.count}, expected {count}"
        await asyncio.sleep(0.001)


def predict_request() -> ipb.PredictRequest:
    return ipb.PredictRequest(model="linear", inputs=[to_tensor("x", np.ones((1, 16), np.float32))])


def infer_request() -> opb.ModelInferRequest:
    request = opb.ModelInferRequest(model_name="linear")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    request.raw_input_contents.append(np.ones((1, 16), np.float32).tobytes())
    return request


async def test_calls_are_counted_while_held_and_released_however_they_end(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight = counter(running)
    oip = opb_grpc.GRPCInferenceServiceStub(running.channel)
    gate = asyncio.Event()
    entered: list[int] = []
    arrived = asyncio.Event()  # set when `expected` calls have reached the core
    expected = 4
    cancelled = asyncio.Event()
    real_predict = InferenceCore.predict

    async def held(self: InferenceCore, call: Any) -> Any:
        entered.append(in_flight.count)
        if len(entered) == expected:
            arrived.set()
        try:
            await gate.wait()
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return await real_predict(self, call)

    monkeypatch.setattr(InferenceCore, "predict", held)
    calls = [running.inference.Predict(predict_request()) for _ in range(2)]
    calls += [oip.ModelInfer(infer_request()) for _ in range(2)]
    await arrived.wait()  # each call reaches the core and waits at the gate
    assert in_flight.count == 4
    await oip.ServerLive(opb.ServerLiveRequest())  # not an inference call: not counted
    assert in_flight.count == 4
    gate.set()
    for call in calls:
        await call
    await settled(in_flight, 0)

    # A call the client abandons while the server holds it.
    gate.clear()
    entered.clear()
    arrived.clear()
    expected = 1
    abandoned = running.inference.Predict(predict_request())
    await arrived.wait()
    assert in_flight.count == 1
    abandoned.cancel()
    await cancelled.wait()
    await settled(in_flight, 0)
    gate.set()

    # Calls that fail: in the core, and before it (a message that does not parse).
    monkeypatch.setattr(InferenceCore, "predict", real_predict)
    await expect_error(
        running.inference.Predict(ipb.PredictRequest(model="nope")), grpc.StatusCode.NOT_FOUND, "nope"
    )
    garbage = running.channel.unary_unary("/inference.GRPCInferenceService/ModelInfer")
    await expect_error(garbage(b"\xff\xff\xff"), grpc.StatusCode.INVALID_ARGUMENT, "ModelInferRequest")
    await settled(in_flight, 0)


async def test_a_deadline_that_passes_in_the_server_releases_the_call(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    in_flight = counter(running)
    never = asyncio.Event()

    async def stuck(self: InferenceCore, call: Any) -> Any:
        await never.wait()

    monkeypatch.setattr(InferenceCore, "predict", stuck)
    with pytest.raises(aio.AioRpcError) as info:
        await running.inference.Predict(predict_request(), timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await settled(in_flight, 0)
