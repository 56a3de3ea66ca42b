"""Inputs the fuzzers found that once escaped as something other than a domain error."""

from __future__ import annotations

import gc
import tracemalloc

import grpc
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2

from ortserve import dtypes, tensors
from ortserve.api.inference import grpc_service_pb2 as oip
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.errors import InvalidInput, NotFound
from ortserve.scheduler.batch_queue import Batch, BatchQueue, Request
from ortserve.scheduler.latency import LatencyModel
from ortserve.scheduler.routing import ModelRoutes, choose
from ortserve.server import convert, oip_convert
from tests.fuzz.server import MODELS, FuzzServer, good_linear_input

FP32 = dtypes.BY_NAME["FP32"]


@pytest.mark.parametrize(
    ("shape", "raw", "dtype", "message"),
    [
        # numpy refuses these shapes with ValueError ("array is too big"), even with no element.
        ([1 << 62, 0], b"", FP32, "spans 4611686018427387904 elements"),
        ([0, (1 << 63) - 1], b"", FP32, "spans 9223372036854775807 elements"),
        ([1 << 31, 1 << 31, 0], b"", dtypes.BYTES, "spans 4611686018427387904 elements"),
        # numpy shapes at most 64 dimensions (32 before numpy 2).
        ([1] * 65, b"\0" * 4, FP32, "65 dimensions, more than 32"),
        ([0] * 70, b"", FP32, "70 dimensions, more than 32"),
        ([1] * 33, b"\0" * 4, FP32, "33 dimensions, more than 32"),
    ],
)
def test_absurd_shapes_are_invalid_input(
    shape: list[int], raw: bytes, dtype: dtypes.DType, message: str
) -> None:
    with pytest.raises(InvalidInput, match=message):
        tensors.decode(raw, dtype, shape, "input 'x'")


def test_a_zero_size_tensor_with_sane_dimensions_still_decodes() -> None:
    assert tensors.decode(b"", FP32, [0, 16], "x").shape == (0, 16)
    assert tensors.decode(b"", dtypes.BYTES, [3, 0], "x").shape == (3, 0)
    assert tensors.decode(b"\0" * 4, FP32, [1] * 32, "x").shape == (1,) * 32


def test_oip_raw_and_typed_inputs_with_absurd_shapes_are_invalid_input() -> None:
    raw = oip.ModelInferRequest(model_name="m", raw_input_contents=[b""])
    raw.inputs.add(name="x", datatype="FP32", shape=[1 << 40, 0])
    typed = oip.ModelInferRequest(model_name="m")
    typed.inputs.add(name="x", datatype="INT64", shape=[0, 1 << 40], contents=oip.InferTensorContents())
    for request in (raw, typed):
        with pytest.raises(InvalidInput, match="model 'm' input 'x': shape"):
            oip_convert.predict_call(request, None)


def test_predict_request_with_too_many_dimensions_is_invalid_input() -> None:
    request = ipb.PredictRequest(model="m")
    request.inputs.add(name="x", data_type=11, shape=[1] * 40, raw_data=b"\0" * 4)
    with pytest.raises(InvalidInput, match="model 'm' input 'x': shape has 40 dimensions"):
        convert.predict_call(request, None)


def test_bytes_elements_are_counted_against_the_data_before_anything_is_allocated() -> None:
    """A 2**31-element BYTES shape over empty data once allocated 16 GiB of object pointers first."""
    tracemalloc.start()
    try:
        with pytest.raises(InvalidInput, match=r"BYTES data is 3 bytes, too short for 2147483648 elements"):
            tensors.decode(b"abc", dtypes.BYTES, [1 << 31], "input 'x'")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 1 << 20


def test_latency_model_after_zero_row_batches_estimates_without_dividing_by_zero() -> None:
    """Three empty requests (shape [0, 16]) taught the model only size 0; the next request with rows
    extrapolated from it (x / 0), and every later request to that version failed INTERNAL."""
    model = LatencyModel()
    for _ in range(3):
        model.observe(0, 10_000)
    assert model.estimate(1) is None  # nothing learned about rows yet
    model.observe(2, 40_000)
    model.observe(2, 40_000)
    model.observe(2, 40_000)
    assert model.estimate(4) == pytest.approx(80_000)


@pytest.mark.asyncio(loop_scope="module")
async def test_health_list_answers_every_service(fuzz_server: FuzzServer) -> None:
    """grpc.health.v1.Health/List is in the protocol, but the asyncio servicer of
    grpcio-health-checking does not implement it: List raised NotImplementedError (INTERNAL)."""
    answer = await fuzz_server.health.List(health_pb2.HealthListRequest(), timeout=10)
    serving = health_pb2.HealthCheckResponse.SERVING
    assert {name: s.status for name, s in answer.statuses.items()} == {
        "": serving,
        "ortserve.api.v1.InferenceService": serving,
        "ortserve.api.v1.RegistryService": serving,
        "inference.GRPCInferenceService": serving,
        **{model: serving for model in MODELS},
    }


# str.isdigit() is true for these, but int() takes none of them (superscripts, circled digits).
NOT_ASCII_DIGITS = ["¹", "²³", "①"]


@pytest.mark.parametrize("selector", NOT_ASCII_DIGITS)
def test_a_version_selector_of_unicode_digits_is_an_unknown_alias(selector: str) -> None:
    """Predict with version "¹" raised ValueError from int() in routing: INTERNAL."""
    with pytest.raises(NotFound, match=f"model 'm' has no version or alias '{selector}'"):
        choose("m", selector, ModelRoutes(), ready=lambda v: True, latest_ready=lambda: 1)


@pytest.mark.asyncio(loop_scope="module")
async def test_predict_and_model_infer_with_a_unicode_digit_version_are_not_found(
    fuzz_server: FuzzServer,
) -> None:
    predict = ipb.PredictRequest(model="linear", version="¹", inputs=[good_linear_input(1)])
    with pytest.raises(aio.AioRpcError) as info:
        await fuzz_server.inference.Predict(predict, timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND, info.value.details()
    infer = oip.ModelInferRequest(model_name="linear", model_version="²", raw_input_contents=[b"\0" * 64])
    infer.inputs.add(name="x", datatype="FP32", shape=[1, 16])
    with pytest.raises(aio.AioRpcError) as info:
        await fuzz_server.oip.ModelInfer(infer, timeout=10)
    assert info.value.code() is grpc.StatusCode.NOT_FOUND, info.value.details()
    ready = await fuzz_server.oip.ModelReady(oip.ModelReadyRequest(name="linear", version="¹"), timeout=10)
    assert not ready.ready


@pytest.mark.asyncio(loop_scope="module")
async def test_model_metadata_and_config_with_a_unicode_digit_version_are_not_found(
    fuzz_server: FuzzServer,
) -> None:
    """OipServicer._describe tested the version with str.isdigit(), then int() raised: INTERNAL."""
    oip_stub = fuzz_server.oip
    calls = [
        oip_stub.ModelMetadata(oip.ModelMetadataRequest(name="linear", version="¹"), timeout=10),
        oip_stub.ModelConfig(oip.ModelConfigRequest(name="linear", version="¹"), timeout=10),
        oip_stub.ModelStatistics(oip.ModelStatisticsRequest(name="linear", version="¹"), timeout=10),
    ]
    for call in calls:
        with pytest.raises(aio.AioRpcError) as info:
            await call
        assert info.value.code() is grpc.StatusCode.NOT_FOUND, info.value.details()


def test_the_batch_queue_forgets_priorities_once_their_requests_are_gone() -> None:
    """Every distinct request priority (uint32 in our API, uint64 in OIP) kept an empty queue for
    good, and each batch scanned all of them: 20,000 priorities took 33 s of batcher time."""
    queue = BatchQueue(max_rows=8, delay_ns=0, preferred=(), latency=LatencyModel())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for priority in range(3000):
            queue.push(Request({}, (), 1, (), None, 0, None), priority)
            batch = queue.next_batch(1 << 62, [])
            assert isinstance(batch, Batch) and len(batch.requests) == 1
        gc.collect()  # a request and its batch refer to each other
        kept = tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()
    assert queue.next_batch(1 << 62, []) is None
    assert kept < 100_000, f"{kept} bytes kept after 3000 requests had left the queue"
