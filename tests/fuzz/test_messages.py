"""hypothesis over the request messages of Predict, ModelInfer, RegisterModel and both streams.

One real server for the module. Every answer is checked (never INTERNAL or UNKNOWN, no internal
text); every CHECK_EVERY cases and after each test a good request succeeds and health is SERVING;
streams answer each message, in order, in-band, and stay up.
"""

from __future__ import annotations

import pytest
from grpc import aio
from hypothesis import given

from ortserve.api.inference import grpc_service_pb2 as oip
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from tests import onnx_models
from tests.fuzz import strategies
from tests.fuzz.server import CALL_TIMEOUT_S, FuzzServer, budget, code_name, good_linear_input, outcome
from tests.server_calls import upload

pytestmark = pytest.mark.asyncio(loop_scope="module")


GOOD_PREDICT = ipb.PredictRequest(model="linear", inputs=[good_linear_input(1)])
GOOD_INFER = oip.ModelInferRequest(model_name="linear", raw_input_contents=[good_linear_input(1).raw_data])
GOOD_INFER.inputs.add(name="x", datatype="FP32", shape=[1, 16])


@budget(800)
@given(request=strategies.predict_requests())
async def test_predict(healthy_after: FuzzServer, request: ipb.PredictRequest) -> None:
    server = healthy_after
    try:
        response = await server.inference.Predict(request, timeout=CALL_TIMEOUT_S)
    except aio.AioRpcError as error:
        server.assert_clean_error(error, "Predict")
        await server.count("Predict", outcome(error))
        return
    assert response.model == request.model
    await server.count("Predict", "OK")


@budget(800)
@given(request=strategies.infer_requests())
async def test_model_infer(healthy_after: FuzzServer, request: oip.ModelInferRequest) -> None:
    server = healthy_after
    try:
        response = await server.oip.ModelInfer(request, timeout=CALL_TIMEOUT_S)
    except aio.AioRpcError as error:
        server.assert_clean_error(error, "ModelInfer")
        await server.count("ModelInfer", outcome(error))
        return
    assert response.model_name == request.model_name
    assert len(response.raw_output_contents) == len(response.outputs)
    await server.count("ModelInfer", "OK")


@budget(250)
@given(messages=strategies.predict_streams(GOOD_PREDICT))
async def test_predict_stream(healthy_after: FuzzServer, messages: list[ipb.PredictStreamRequest]) -> None:
    server = healthy_after
    call = server.inference.PredictStream(iter(messages), timeout=CALL_TIMEOUT_S)
    answers = [answer async for answer in call]  # the stream itself must end OK
    assert [a.id for a in answers] == [m.id for m in messages]
    outcomes = []
    for message, answer in zip(messages, answers, strict=True):
        if answer.HasField("error"):
            server.assert_clean_code(answer.error.code, answer.error.message, "PredictStream")
            outcomes.append("in-band " + code_name(answer.error.code))
        else:
            outcomes.append("OK")
        if message.request == GOOD_PREDICT:
            assert answer.HasField("response"), answer
    await server.count("PredictStream", *outcomes)


@budget(250)
@given(messages=strategies.infer_streams(GOOD_INFER))
async def test_model_stream_infer(healthy_after: FuzzServer, messages: list[oip.ModelInferRequest]) -> None:
    server = healthy_after
    call = server.oip.ModelStreamInfer(iter(messages), timeout=CALL_TIMEOUT_S)
    answers = [answer async for answer in call]  # the stream itself must end OK
    assert [a.infer_response.id for a in answers] == [m.id for m in messages]
    outcomes = []
    for message, answer in zip(messages, answers, strict=True):
        if answer.error_message:
            server.assert_clean_text(answer.error_message, "ModelStreamInfer")
        outcomes.append("in-band error" if answer.error_message else "OK")
        if _is_good(message):
            assert not answer.error_message, answer.error_message
    await server.count("ModelStreamInfer", *outcomes)


def _is_good(message: oip.ModelInferRequest) -> bool:
    good = oip.ModelInferRequest()
    good.CopyFrom(message)
    good.id = GOOD_INFER.id
    return good == GOOD_INFER


@budget(300)
@given(messages=strategies.register_sequences())
async def test_register_model(healthy_after: FuzzServer, messages: list[rpb.RegisterModelRequest]) -> None:
    server = healthy_after
    try:
        await upload(server.address, messages, deadline_s=CALL_TIMEOUT_S)
    except aio.AioRpcError as error:
        server.assert_clean_error(error, "RegisterModel")
        await server.count("RegisterModel", outcome(error))
        return
    raise AssertionError(f"RegisterModel accepted chunks that are no ONNX model: {messages!r}")


@budget(15)
@given(messages=strategies.model_uploads(onnx_models.add()))
async def test_register_model_bytes(
    healthy_after: FuzzServer, messages: list[rpb.RegisterModelRequest]
) -> None:
    """The model or a damaged copy, with a matching sha256: these reach validation and loading."""
    server = healthy_after
    try:
        response = await upload(server.address, messages)
    except aio.AioRpcError as error:
        server.assert_clean_error(error, "RegisterModel")
        await server.count("RegisterModel (valid sha256)", outcome(error))
        return
    server.assert_clean_text(response.version.error, "RegisterModel: the version's error")
    state = mpb.VersionState.Name(response.version.state)
    await server.count("RegisterModel (valid sha256)", f"OK {state}")
