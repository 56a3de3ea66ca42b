"""Open Inference Protocol conversions: every datatype raw and typed, and the exact messages of bad input."""

from __future__ import annotations

import struct
from types import MappingProxyType

import numpy as np
import pytest

from ortserve import dtypes
from ortserve.api.inference import grpc_service_pb2 as pb
from ortserve.api.inference import model_config_pb2 as mc
from ortserve.errors import InvalidInput
from ortserve.records import BatchingSettings, ModelVersionRecord, SessionSettings, VersionState
from ortserve.scheduler.calls import PredictResult, Timing
from ortserve.scheduler.pool import DEFAULT_MAX_BATCH_SIZE, VersionSlot
from ortserve.server import oip_convert as convert
from ortserve.signature import Signature, TensorSpec

FIXED = [
    "BOOL",
    "INT8",
    "INT16",
    "INT32",
    "INT64",
    "UINT8",
    "UINT16",
    "UINT32",
    "UINT64",
    "FP16",
    "FP32",
    "FP64",
]
TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


def sample(name: str) -> np.ndarray:
    if name == "BYTES":
        return np.array([[b"a", b""], [b"\x00z", "é".encode()]], dtype=object)
    if name == "BOOL":
        return np.array([[True, False], [False, True]])
    return (np.arange(4) + 1).reshape(2, 2).astype(dtypes.BY_NAME[name].numpy)


def raw_of(array: np.ndarray) -> bytes:
    if array.dtype == object:
        return b"".join(struct.pack("<I", len(x)) + x for x in array.ravel())
    return array.astype(array.dtype.newbyteorder("<")).tobytes()


def raw_request(*tensors: tuple[str, str, np.ndarray], model: str = "m") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    for name, datatype, array in tensors:
        request.inputs.add(name=name, datatype=datatype, shape=array.shape)
        request.raw_input_contents.append(raw_of(array))
    return request


def typed_request(name: str, datatype: str, array: np.ndarray, model: str = "m") -> pb.ModelInferRequest:
    request = pb.ModelInferRequest(model_name=model)
    tensor = request.inputs.add(name=name, datatype=datatype, shape=array.shape)
    getattr(tensor.contents, TYPED_FIELD[datatype]).extend(array.ravel().tolist())
    return request


def error_of(request: pb.ModelInferRequest) -> str:
    with pytest.raises(InvalidInput) as info:
        convert.predict_call(request, None)
    return str(info.value)


# -- inputs -------------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [*FIXED, "BYTES"])
def test_raw_input_round_trips_every_datatype(datatype: str) -> None:
    array = sample(datatype)
    call = convert.predict_call(raw_request(("x", datatype, array)), None)
    got = call.feeds["x"]
    assert got.shape == (2, 2)
    assert dtypes.of_array(got).name == datatype
    assert got.tolist() == as_fed(array).tolist()


def as_fed(array: np.ndarray) -> np.ndarray:
    """What the core gets: BYTES become str, as ONNX Runtime string tensors hold text."""
    if array.dtype != object:
        return array
    return np.array([[b.decode() for b in row] for row in array], dtype=object)


@pytest.mark.parametrize("datatype", FIXED)
def test_raw_fixed_size_input_is_a_zero_copy_view(datatype: str) -> None:
    request = raw_request(("x", datatype, sample(datatype)))
    got = convert.predict_call(request, None).feeds["x"]
    assert not got.flags.owndata
    assert not got.flags.writeable


@pytest.mark.parametrize("datatype", [d for d in TYPED_FIELD])
def test_typed_input_round_trips_every_datatype_with_a_typed_field(datatype: str) -> None:
    array = sample(datatype)
    got = convert.predict_call(typed_request("x", datatype, array), None).feeds["x"]
    assert got.shape == (2, 2)
    assert dtypes.of_array(got).name == datatype
    assert got.tolist() == as_fed(array).tolist()


@pytest.mark.parametrize("typed", [False, True])
def test_bytes_that_are_not_utf8_are_refused(typed: bool) -> None:
    array = np.array([b"ok", b"\xff"], dtype=object)
    request = typed_request("x", "BYTES", array) if typed else raw_request(("x", "BYTES", array))
    assert (
        error_of(request)
        == "model 'm' input 'x': BYTES element 1 is not valid UTF-8 (invalid start byte at byte 0)"
    )


def test_typed_fp16_is_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP16", shape=[1]).contents.fp32_contents.append(1.0)
    assert error_of(request) == (
        "model 'm' input 'x': datatype FP16 has no typed contents; send it in raw_input_contents"
    )


def test_typed_value_out_of_range_for_a_narrow_type() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="INT8", shape=[2]).contents.int_contents.extend([1, 200])
    assert (
        error_of(request)
        == "model 'm' input 'x': a value in contents.int_contents is out of range for INT8 (-128..127)"
    )


def test_typed_value_count_must_match_the_shape() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[2, 3]).contents.fp32_contents.extend([1.0] * 5)
    assert (
        error_of(request)
        == "model 'm' input 'x': contents.fp32_contents has 5 values but shape [2, 3] needs 6"
    )


def test_typed_input_without_contents_is_refused() -> None:
    request = pb.ModelInferRequest(model_name="m")
    request.inputs.add(name="x", datatype="FP32", shape=[1, 3])
    assert error_of(request) == (
        "model 'm' input 'x' carries no data: set its contents or send raw_input_contents"
    )


def test_wrong_raw_byte_size() -> None:
    request = raw_request(("x", "FP32", np.zeros((2, 3), np.float32)))
    request.raw_input_contents[0] = b"\x00" * 20
    assert (
        error_of(request)
        == "model 'm' input 'x': raw data is 20 bytes but shape [2, 3] of FP32 needs 24 bytes"
    )


def test_negative_dimension_is_refused_even_when_the_size_matches() -> None:
    request = raw_request(("x", "FP32", np.zeros((2, 3), np.float32)))
    del request.inputs[0].shape[:]
    request.inputs[0].shape.extend([-2, -3])
    assert error_of(request) == "model 'm' input 'x': shape [-2, -3] has a negative dimension"


def test_truncated_bytes_element() -> None:
    request = raw_request(("x", "BYTES", np.array([b"abc"], dtype=object)))
    request.raw_input_contents[0] = struct.pack("<I", 10) + b"abc"
    assert (
        error_of(request) == "model 'm' input 'x': BYTES element 0 claims 10 bytes past the end of the data"
    )


def test_unknown_datatype_is_named() -> None:
    request = raw_request(("x", "FP32", np.zeros(2, np.float32)))
    request.inputs[0].datatype = "FLOAT"
    assert error_of(request) == (
        "model 'm' input 'x': unsupported datatype 'FLOAT'; expected one of "
        "BOOL, UINT8, UINT16, UINT32, UINT64, INT8, INT16, INT32, INT64, FP16, FP32, FP64, BYTES"
    )


def test_mixed_raw_and_typed_inputs_are_refused() -> None:
    request = raw_request(("a", "FP32", np.zeros(2, np.float32)))
    request.inputs.add(name="b", datatype="FP32", shape=[2]).contents.fp32_contents.extend([1.0, 2.0])
    request.raw_input_contents.append(raw_of(np.zeros(2, np.float32)))
    assert error_of(request) == (
        "model 'm' input 'b' has typed contents while the request uses raw_input_contents; "
        "send all inputs raw or all typed"
    )


def test_missing_raw_contents_for_an_input() -> None:
    request = raw_request(("a", "FP32", np.zeros(2, np.float32)))
    request.inputs.add(name="b", datatype="FP32", shape=[2])
    assert error_of(request) == (
        "model 'm': 1 raw_input_contents for 2 inputs; send one per input, in the order of the inputs"
    )


def test_duplicate_input_name() -> None:
    array = np.zeros(2, np.float32)
    assert (
        error_of(raw_request(("a", "FP32", array), ("a", "FP32", array)))
        == "model 'm' input 'a' is given twice"
    )


def test_missing_model_name() -> None:
    assert error_of(raw_request(("a", "FP32", np.zeros(2, np.float32)), model="")) == "request names no model"


# -- parameters and outputs --------------------------------------------------------------------------


def test_outputs_priority_and_timeout_reach_the_call() -> None:
    request = raw_request(("x", "FP32", np.zeros(2, np.float32)))
    request.model_version = "3"
    request.outputs.add(name="y")
    request.parameters["priority"].uint64_param = 2
    request.parameters["timeout"].int64_param = 250_000
    call = convert.predict_call(request, 10.0)
    assert (call.selector, tuple(call.outputs), call.priority, call.timeout_s) == ("3", ("y",), 2, 0.25)
    assert convert.predict_call(request, 0.1).timeout_s == 0.1


def test_a_string_priority_is_refused() -> None:
    request = raw_request(("x", "FP32", np.zeros(2, np.float32)))
    request.parameters["priority"].string_param = "high"
    assert error_of(request) == "request parameter 'priority' must be an int64 or uint64, got string_param"


def test_sequences_are_refused() -> None:
    request = raw_request(("x", "FP32", np.zeros(2, np.float32)))
    request.parameters["sequence_id"].int64_param = 7
    assert error_of(request) == "model 'm': sequence batching (parameter 'sequence_id') is not supported"


def test_final_flag_request() -> None:
    request = pb.ModelInferRequest(model_name="m")
    assert not convert.wants_final_flag(request)
    request.parameters["triton_enable_empty_final_response"].bool_param = True
    assert convert.wants_final_flag(request)


# -- responses ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("datatype", [*FIXED, "BYTES"])
def test_response_is_always_raw(datatype: str) -> None:
    array = sample(datatype)
    if datatype == "BYTES":  # ONNX Runtime hands strings back as str
        array = as_fed(array)
    result = PredictResult("m", 4, {"y": array}, Timing(1500, 2500, 2, "CPUExecutionProvider"))
    response = convert.infer_response(result, "req-1")
    assert (response.model_name, response.model_version, response.id) == ("m", "4", "req-1")
    (output,) = response.outputs
    assert (output.name, output.datatype, list(output.shape)) == ("y", datatype, [2, 2])
    assert not output.HasField("contents")
    expected = (
        raw_of(np.array([[s.encode() for s in r] for r in array], dtype=object))
        if datatype == "BYTES"
        else raw_of(array)
    )
    assert response.raw_output_contents[0] == expected
    params = response.parameters
    assert params["ortserve_version"].int64_param == 4
    assert params["ortserve_queue_us"].int64_param == 1
    assert params["ortserve_compute_us"].int64_param == 2
    assert params["ortserve_batch_size"].int64_param == 2
    assert params["ortserve_provider"].string_param == "CPUExecutionProvider"


def test_stream_error_keeps_the_request_id() -> None:
    request = pb.ModelInferRequest(model_name="m", model_version="2", id="r7")
    answer = convert.stream_error(request, "boom", True)
    assert answer.error_message == "boom"
    assert (answer.infer_response.id, answer.infer_response.model_name) == ("r7", "m")
    assert answer.infer_response.parameters[convert.FINAL_RESPONSE].bool_param


# -- metadata and config -----------------------------------------------------------------------------


def record(batch_axis: bool = True, max_batch_size: int | None = None) -> ModelVersionRecord:
    from datetime import UTC, datetime

    lead = (-1,) if batch_axis else (2,)
    signature = Signature(
        (TensorSpec("x", dtypes.BY_NAME["FP32"], (*lead, 3)), TensorSpec("s", dtypes.BYTES, (*lead, 1))),
        (TensorSpec("y", dtypes.BY_NAME["INT64"], (*lead, 3)),),
        batch_axis,
    )
    return ModelVersionRecord(
        model="m",
        version=2,
        sha256="ab" * 32,
        size_bytes=10,
        opset=17,
        producer="t",
        signature=signature,
        providers=(),
        batching=BatchingSettings(
            max_batch_size=max_batch_size, preferred_batch_sizes=(4, 8), max_queue_delay_us=500
        ),
        session=SessionSettings(),
        state=VersionState.REGISTERED,
        error="",
        description="",
        labels=MappingProxyType({}),
        created_by="",
        created_at=datetime.now(UTC),
        path="/nowhere",
    )


def test_metadata_lists_versions_and_variable_dims() -> None:
    meta = convert.model_metadata(record(), [1, 2])
    assert (meta.name, list(meta.versions), meta.platform) == ("m", ["1", "2"], "onnxruntime_onnx")
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.inputs] == [
        ("x", "FP32", [-1, 3]),
        ("s", "BYTES", [-1, 1]),
    ]
    assert [(t.name, t.datatype, list(t.shape)) for t in meta.outputs] == [("y", "INT64", [-1, 3])]


def test_config_of_a_batchable_model_leaves_out_the_batch_dim() -> None:
    config = convert.model_config(VersionSlot(record()))
    assert (config.name, config.platform, config.backend, config.max_batch_size) == (
        "m",
        "onnxruntime_onnx",
        "onnxruntime",
        DEFAULT_MAX_BATCH_SIZE,
    )
    assert [(i.name, i.data_type, list(i.dims)) for i in config.input] == [
        ("x", mc.TYPE_FP32, [3]),
        ("s", mc.TYPE_STRING, [1]),
    ]
    assert [(o.name, o.data_type, list(o.dims)) for o in config.output] == [("y", mc.TYPE_INT64, [3])]
    assert config.WhichOneof("scheduling_choice") == "dynamic_batching"
    assert list(config.dynamic_batching.preferred_batch_size) == [4, 8]
    assert config.dynamic_batching.max_queue_delay_microseconds == 500
    assert config.instance_group[0].kind == mc.ModelInstanceGroup.KIND_CPU
    assert config.instance_group[0].count == 1
    assert config.version_policy.latest.num_versions == 1
    assert config.parameters["ortserve_version"].string_value == "2"


def test_config_of_an_unbatched_model_keeps_full_dims() -> None:
    for rec in (record(batch_axis=False), record(batch_axis=True, max_batch_size=0)):
        config = convert.model_config(VersionSlot(rec))
        assert config.max_batch_size == 0
        assert len(config.input[0].dims) == 2
        assert config.WhichOneof("scheduling_choice") is None


def test_config_reports_the_configured_batch_limit() -> None:
    assert convert.model_config(VersionSlot(record(max_batch_size=16))).max_batch_size == 16
    single = convert.model_config(VersionSlot(record(max_batch_size=1)))
    assert (single.max_batch_size, list(single.input[0].dims)) == (1, [3])
    assert single.WhichOneof("scheduling_choice") is None


def test_index_entry_states() -> None:
    slot = VersionSlot(record())
    assert (convert.index_entry(slot).state, convert.index_entry(slot).reason) == (
        "UNAVAILABLE",
        "registered",
    )
    slot.state, slot.error = VersionState.FAILED, "bad graph"
    assert (convert.index_entry(slot).state, convert.index_entry(slot).reason) == ("UNAVAILABLE", "bad graph")
    slot.state, slot.error = VersionState.READY, ""
    assert (
        convert.index_entry(slot).state,
        convert.index_entry(slot).reason,
        convert.index_entry(slot).version,
    ) == (
        "READY",
        "",
        "2",
    )


def test_statistics_copy_every_counter() -> None:
    slot = VersionSlot(record())
    slot.stats.record_batch(2, 10, 20, 30)
    slot.stats.record_request(True, 100, 5)
    slot.stats.record_request(False, 7, 0)
    stats = convert.model_statistics(slot)
    assert (stats.name, stats.version, stats.inference_count, stats.execution_count) == ("m", "2", 1, 1)
    assert stats.last_inference > 0
    inf = stats.inference_stats
    assert (inf.success.count, inf.success.ns, inf.fail.count, inf.fail.ns) == (1, 100, 1, 7)
    assert (inf.queue.ns, inf.compute_input.ns, inf.compute_infer.ns, inf.compute_output.ns) == (
        5,
        10,
        20,
        30,
    )
    assert [(b.batch_size, b.compute_infer.ns) for b in stats.batch_stats] == [(2, 20)]


# -- RepositoryModelLoad -----------------------------------------------------------------------------


def test_uploaded_model_file() -> None:
    params = pb.RepositoryModelLoadRequest().parameters
    assert convert.uploaded_model("m", params) is None
    params["config"].string_param = "{}"
    params["file:1/model.onnx"].bytes_param = b"onnx"
    assert convert.uploaded_model("m", params) == b"onnx"
    params["file:1/extra.txt"].bytes_param = b"x"
    with pytest.raises(InvalidInput, match="load one model file at a time"):
        convert.uploaded_model("m", params)


def test_uploaded_model_must_be_onnx_bytes() -> None:
    params = pb.RepositoryModelLoadRequest().parameters
    params["file:1/model.pt"].bytes_param = b"x"
    with pytest.raises(InvalidInput) as info:
        convert.uploaded_model("m", params)
    assert str(info.value) == "model 'm': parameter 'file:1/model.pt' must carry the bytes of an .onnx file"
