"""Our API end to end: Predict, PredictStream, GetModelSignature, and every bad input."""

from __future__ import annotations

import asyncio
import hashlib

import grpc
import numpy as np
import onnxruntime as ort
import pytest

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.client.client import from_tensor, to_tensor
from tests.integration.conftest import Running, expect_error
from tests.server_calls import upload as upload_blocking


def request(x: np.ndarray, model: str = "linear", version: str = "") -> ipb.PredictRequest:
    return ipb.PredictRequest(model=model, version=version, inputs=[to_tensor("x", x)])


def reference(running: Running, model: str, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(running.models[model])).run(None, feeds)


async def good_request_succeeds(running: Running) -> None:
    x = np.random.default_rng(3).standard_normal((2, 16)).astype(np.float32)
    response = await running.inference.Predict(request(x))
    np.testing.assert_allclose(
        from_tensor(response.outputs[0]), reference(running, "linear", {"x": x})[0], rtol=1e-6
    )


async def test_predict_matches_in_process_onnxruntime(running: Running) -> None:
    x = np.random.default_rng(0).standard_normal((5, 16)).astype(np.float32)
    response = await running.inference.Predict(request(x))
    assert response.model == "linear" and response.model_version == 1
    assert response.timing.provider == "CPUExecutionProvider" and response.timing.batch_size >= 5
    np.testing.assert_allclose(
        from_tensor(response.outputs[0]), reference(running, "linear", {"x": x})[0], rtol=1e-6
    )


async def test_two_inputs_and_strings(running: Running) -> None:
    a, b = np.ones((2, 4), np.float32), np.arange(8, dtype=np.float32).reshape(2, 4)
    response = await running.inference.Predict(
        ipb.PredictRequest(model="add", inputs=[to_tensor("a", a), to_tensor("b", b)])
    )
    np.testing.assert_array_equal(from_tensor(response.outputs[0]), a + b)
    texts = np.array(["héllo", "", "wörld"], dtype=object)
    response = await running.inference.Predict(
        ipb.PredictRequest(model="strings", inputs=[to_tensor("x", texts)])
    )
    assert from_tensor(response.outputs[0]).tolist() == [t.encode() for t in texts]


async def test_stream_answers_in_order_with_in_band_errors(running: Running) -> None:
    rng = np.random.default_rng(1)
    inputs = [rng.standard_normal((int(n), 16)).astype(np.float32) for n in rng.integers(1, 6, size=20)]
    messages = [ipb.PredictStreamRequest(id=str(i), request=request(x)) for i, x in enumerate(inputs)]
    messages.insert(7, ipb.PredictStreamRequest(id="bad", request=request(np.zeros((1, 3), np.float32))))
    answers = [a async for a in running.inference.PredictStream(iter(messages))]
    assert [a.id for a in answers] == [m.id for m in messages]
    bad = answers.pop(7)
    assert bad.error.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "shape [1, 3] does not match the expected [-1, 16] at axis 1" in bad.error.message
    for x, answer in zip(inputs, answers, strict=True):
        np.testing.assert_allclose(
            from_tensor(answer.response.outputs[0]),
            reference(running, "linear", {"x": x})[0],
            rtol=1e-5,
            atol=1e-6,
        )


async def test_concurrent_callers_get_their_own_rows(running: Running) -> None:
    rng = np.random.default_rng(2)
    inputs = [rng.standard_normal((int(n), 16)).astype(np.float32) for n in rng.integers(1, 8, size=64)]
    responses = await asyncio.gather(*(running.inference.Predict(request(x)) for x in inputs))
    for x, response in zip(inputs, responses, strict=True):
        np.testing.assert_allclose(
            from_tensor(response.outputs[0]), reference(running, "linear", {"x": x})[0], rtol=1e-5, atol=1e-6
        )


async def test_signature(running: Running) -> None:
    response = await running.inference.GetModelSignature(ipb.GetModelSignatureRequest(model="linear"))
    assert response.model_version == 1 and response.signature.batch_axis
    assert [(s.name, list(s.shape)) for s in response.signature.inputs] == [("x", [-1, 16])]


BAD_PREDICTS = [
    (
        "unknown model",
        request(np.zeros((1, 16), np.float32), model="nope"),
        grpc.StatusCode.NOT_FOUND,
        "model 'nope' is not registered",
    ),
    (
        "unknown version",
        request(np.zeros((1, 16), np.float32), version="9"),
        grpc.StatusCode.NOT_FOUND,
        "model 'linear' has no version 9; versions: 1",
    ),
    (
        "bad selector",
        request(np.zeros((1, 16), np.float32), version="latest!"),
        grpc.StatusCode.NOT_FOUND,
        "model 'linear' has no version or alias 'latest!'",
    ),
    (
        "unknown input",
        ipb.PredictRequest(model="linear", inputs=[to_tensor("z", np.zeros((1, 16), np.float32))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'linear' has no input 'z'; expected inputs: x",
    ),
    (
        "missing input",
        ipb.PredictRequest(model="add", inputs=[to_tensor("a", np.zeros((1, 4), np.float32))]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'add' is missing input(s) b",
    ),
    (
        "wrong dtype",
        request(np.zeros((1, 16), np.float64)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'linear' input 'x': datatype FP64 does not match the expected FP32",
    ),
    (
        "wrong rank",
        request(np.zeros((16,), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "rank 1 (shape [16]) does not match the expected rank 2 (shape [-1, 16])",
    ),
    (
        "wrong shape",
        request(np.zeros((2, 15), np.float32)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [2, 15] does not match the expected [-1, 16] at axis 1",
    ),
    (
        "raw size",
        ipb.PredictRequest(
            model="linear",
            inputs=[tpb.Tensor(name="x", data_type=tpb.DATA_TYPE_FP32, shape=[2, 16], raw_data=b"\0" * 100)],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "raw data is 100 bytes but shape [2, 16] of FP32 needs 128 bytes",
    ),
    (
        "negative dim",
        ipb.PredictRequest(
            model="linear", inputs=[tpb.Tensor(name="x", data_type=tpb.DATA_TYPE_FP32, shape=[-2, 16])]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "shape [-2, 16] has a negative dimension",
    ),
    (
        "no data type",
        ipb.PredictRequest(model="linear", inputs=[tpb.Tensor(name="x", shape=[1, 16])]),
        grpc.StatusCode.INVALID_ARGUMENT,
        "data_type 0 is not a supported DataType",
    ),
    ("empty request", ipb.PredictRequest(), grpc.StatusCode.INVALID_ARGUMENT, "request names no model"),
    (
        "no inputs",
        ipb.PredictRequest(model="linear"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "request for model 'linear' has no inputs; expected x",
    ),
    (
        "unknown output",
        ipb.PredictRequest(
            model="linear", inputs=[to_tensor("x", np.zeros((1, 16), np.float32))], output_names=["q"]
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "model 'linear' has no output 'q'; outputs: y",
    ),
    (
        "bad utf-8",
        ipb.PredictRequest(
            model="strings",
            inputs=[
                tpb.Tensor(
                    name="x", data_type=tpb.DATA_TYPE_STRING, shape=[1], raw_data=b"\x02\0\0\0\xff\xfe"
                )
            ],
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "BYTES element 0 is not valid UTF-8",
    ),
]


@pytest.mark.parametrize(("case", "message", "code", "text"), BAD_PREDICTS, ids=[c[0] for c in BAD_PREDICTS])
async def test_bad_predict(
    running: Running, case: str, message: ipb.PredictRequest, code: grpc.StatusCode, text: str
) -> None:
    await expect_error(running.inference.Predict(message), code, text)
    await good_request_succeeds(running)


async def test_oversized_message(running: Running) -> None:
    x = np.zeros((140_000, 16), np.float32)  # 8.9 MB > the server's 8 MiB limit
    await expect_error(
        running.inference.Predict(request(x)), grpc.StatusCode.RESOURCE_EXHAUSTED, "larger than max"
    )
    await good_request_succeeds(running)


def upload(
    data: bytes, name: str = "uploaded", sha: str | None = None, size: int | None = None
) -> list[rpb.RegisterModelRequest]:
    manifest = rpb.RegisterManifest(
        name=name,
        size_bytes=len(data) if size is None else size,
        sha256=sha or hashlib.sha256(data).hexdigest(),
        load=True,
    )
    return [rpb.RegisterModelRequest(manifest=manifest), rpb.RegisterModelRequest(chunk=data)]


async def test_register_uploads_and_serves(running: Running) -> None:
    data = running.models["linear"].read_bytes()
    response = await running.registry.RegisterModel(iter(upload(data, name="linear")))
    assert response.version.version == 2 and response.version.state == 3  # READY
    x = np.ones((1, 16), np.float32)
    served = await running.inference.Predict(request(x, version="2"))
    assert served.model_version == 2
    latest = await running.inference.Predict(request(x))
    assert latest.model_version == 2


BAD_UPLOADS = [
    (
        "corrupt bytes",
        upload(b"not an onnx model at all"),
        grpc.StatusCode.INVALID_ARGUMENT,
        "not a valid ONNX model",
    ),
    ("sha mismatch", upload(b"x" * 10, sha="0" * 64), grpc.StatusCode.INVALID_ARGUMENT, "sha256 mismatch"),
    (
        "size mismatch",
        upload(b"x" * 10, size=11),
        grpc.StatusCode.INVALID_ARGUMENT,
        "received 10 bytes but the manifest declared 11",
    ),
    ("invalid name", upload(b"x" * 10, name="Bad Name!"), grpc.StatusCode.INVALID_ARGUMENT, "'Bad Name!'"),
    (
        "no manifest",
        [rpb.RegisterModelRequest(chunk=b"abc")],
        grpc.StatusCode.INVALID_ARGUMENT,
        "RegisterModel must start with a manifest message",
    ),
    (
        "oversized chunk",
        upload(b"x" * (1024 * 1024 + 1)),
        grpc.StatusCode.INVALID_ARGUMENT,
        "exceeds the limit of 1048576 bytes",
    ),
]


@pytest.mark.parametrize(("case", "messages", "code", "text"), BAD_UPLOADS, ids=[c[0] for c in BAD_UPLOADS])
async def test_bad_upload(
    running: Running, case: str, messages: list[rpb.RegisterModelRequest], code: grpc.StatusCode, text: str
) -> None:
    await expect_error(upload_blocking(running.address, messages), code, text)
    listed = await running.registry.ListModels(rpb.ListModelsRequest())
    assert sorted(m.name for m in listed.models) == ["add", "fixed", "linear", "strings"]
    await good_request_succeeds(running)
