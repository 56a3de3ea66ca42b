"""Open Inference Protocol (Triton/KServe v2) messages to and from the core's numpy calls and records.

Inputs come either all in `raw_input_contents` (entry i is input i) or all in typed `contents`;
replies always use `raw_output_contents`, which is all tritonclient reads. Inputs and outputs with
the `shared_memory_region` parameter live in a registered system shared memory region instead
(scheduler/shm.py): such inputs take no `raw_input_contents` entry, such outputs get none.
Tables are built once at import; the request path does one dict lookup per input and decodes raw
data with `np.frombuffer`.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ortserve import dtypes, tensors
from ortserve.api.inference import grpc_service_pb2 as pb
from ortserve.api.inference import model_config_pb2 as mc
from ortserve.dtypes import BYTES, DType
from ortserve.errors import InvalidInput
from ortserve.records import ModelVersionRecord, VersionState
from ortserve.scheduler.calls import PredictCall, PredictResult
from ortserve.scheduler.pool import VersionSlot, batcher_config
from ortserve.scheduler.shm import Region, RegionLookup
from ortserve.scheduler.stats import Duration, VersionStats
from ortserve.signature import Signature, TensorSpec

PLATFORM = "onnxruntime_onnx"
BACKEND = "onnxruntime"
FINAL_RESPONSE = "triton_final_response"
SHM_REGION = "shared_memory_region"
SHM_OFFSET = "shared_memory_offset"
SHM_BYTE_SIZE = "shared_memory_byte_size"
GPU_PROVIDERS = frozenset(
    {
        "CUDAExecutionProvider",
        "TensorrtExecutionProvider",
        "ROCMExecutionProvider",
        "MIGraphXExecutionProvider",
        "DmlExecutionProvider",
    }
)

_BY_NAME = dtypes.BY_NAME
_NAME_BY_NUMPY = {d.numpy: d.name for d in dtypes.ALL}
_CONFIG_TYPE = {d: mc.DataType.Value("TYPE_" + ("STRING" if d is BYTES else d.name)) for d in dtypes.ALL}
_NARROW: dict[str, type[np.integer[Any]]] = {
    "INT8": np.int8,
    "INT16": np.int16,
    "UINT8": np.uint8,
    "UINT16": np.uint16,
}
# datatype -> (typed contents field, numpy type of that field's values)
_TYPED: dict[str, tuple[str, np.dtype[Any]]] = {
    "BOOL": ("bool_contents", np.dtype(np.bool_)),
    "INT8": ("int_contents", np.dtype(np.int32)),
    "INT16": ("int_contents", np.dtype(np.int32)),
    "INT32": ("int_contents", np.dtype(np.int32)),
    "INT64": ("int64_contents", np.dtype(np.int64)),
    "UINT8": ("uint_contents", np.dtype(np.uint32)),
    "UINT16": ("uint_contents", np.dtype(np.uint32)),
    "UINT32": ("uint_contents", np.dtype(np.uint32)),
    "UINT64": ("uint64_contents", np.dtype(np.uint64)),
    "FP32": ("fp32_contents", np.dtype(np.float32)),
    "FP64": ("fp64_contents", np.dtype(np.float64)),
    "BYTES": ("bytes_contents", np.dtype(object)),
}
# Integer types narrower than their typed field: the range a value must fall in.
_RANGE = {name: (int(np.iinfo(t).min), int(np.iinfo(t).max)) for name, t in _NARROW.items()}
_STATE_NAMES = {
    VersionState.READY: "READY",
    VersionState.LOADING: "LOADING",
    VersionState.REGISTERED: "UNAVAILABLE",
    VersionState.FAILED: "UNAVAILABLE",
    VersionState.RETIRED: "UNAVAILABLE",
}


def _what(model: str, name: str) -> str:
    return f"model {model!r} input {name!r}"


@dataclass(frozen=True, slots=True)
class ShmPlace:
    """Where a tensor's bytes are: `byte_size` bytes at `offset` of a registered region."""

    region: Region
    offset: int
    byte_size: int


def _shm_place(
    params: Mapping[str, pb.InferParameter], regions: RegionLookup | None, what: str
) -> ShmPlace | None:
    """The shared memory place `params` name, or None when they name no region."""
    if not params or SHM_REGION not in params:
        return None
    region_name = params[SHM_REGION].string_param
    if not region_name:
        raise InvalidInput(f"{what}: parameter {SHM_REGION!r} must be a non-empty string")
    if SHM_BYTE_SIZE not in params:
        raise InvalidInput(f"{what}: shared memory needs the parameter {SHM_BYTE_SIZE!r}")
    if regions is None:
        raise InvalidInput(f"{what}: shared memory is not available here")
    region = regions(region_name)
    return ShmPlace(region, _int_param(params, SHM_OFFSET, what), _int_param(params, SHM_BYTE_SIZE, what))


# -- ModelInfer: request -> PredictCall ------------------------------------------------------------


def predict_call(
    request: pb.ModelInferRequest, timeout_s: float | None, regions: RegionLookup | None = None
) -> PredictCall:
    """The core's call for `request`; `timeout_s` is the gRPC deadline's remaining time, if any.

    `regions` finds the caller's shared memory regions that inputs may name.
    """
    model = request.model_name
    if not model:
        raise InvalidInput("request names no model")
    raw = request.raw_input_contents
    if any(t.parameters and SHM_REGION in t.parameters for t in request.inputs):
        feeds = _shared_feeds(request, raw, regions)
    else:
        feeds = _raw_feeds(request, raw) if raw else _typed_feeds(request)
    priority = 0
    if request.parameters:
        priority, timeout_s = _request_options(request.parameters, model, timeout_s)
    return PredictCall(
        model=model,
        selector=request.model_version,
        feeds=feeds,
        outputs=_requested_outputs(request.outputs, model) if request.outputs else (),
        priority=priority,
        timeout_s=timeout_s,
    )


def _raw_feeds(request: pb.ModelInferRequest, raw: Sequence[bytes]) -> dict[str, np.ndarray]:
    model, inputs = request.model_name, request.inputs
    if len(raw) != len(inputs):
        raise InvalidInput(
            f"model {model!r}: {len(raw)} raw_input_contents for {len(inputs)} inputs; "
            "send one per input, in the order of the inputs"
        )
    feeds: dict[str, np.ndarray] = {}
    for tensor, data in zip(inputs, raw, strict=True):
        _add(feeds, tensor.name, _raw_array(tensor, data, model), model)
    return feeds


def _raw_array(
    tensor: pb.ModelInferRequest.InferInputTensor, data: bytes | memoryview, model: str
) -> np.ndarray:
    name = tensor.name
    if tensor.HasField("contents"):
        raise InvalidInput(
            f"{_what(model, name)} has typed contents while the request uses raw_input_contents; "
            "send all inputs raw or all typed"
        )
    what = _what(model, name)
    return tensors.decode(data, _dtype(tensor, model), tensor.shape, what, text=True)  # type: ignore[arg-type]


def _typed_feeds(request: pb.ModelInferRequest) -> dict[str, np.ndarray]:
    model = request.model_name
    feeds: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        _add(feeds, tensor.name, _typed_array(tensor, model), model)
    return feeds


def _typed_array(tensor: pb.ModelInferRequest.InferInputTensor, model: str) -> np.ndarray:
    dtype = _dtype(tensor, model)
    if not tensor.HasField("contents") and math.prod(tensor.shape) != 0:
        raise InvalidInput(
            f"{_what(model, tensor.name)} carries no data: set its contents or send raw_input_contents"
        )
    return array_from_contents(tensor.contents, dtype, tuple(tensor.shape), model, tensor.name)


def _shared_feeds(
    request: pb.ModelInferRequest, raw: Sequence[bytes], regions: RegionLookup | None
) -> dict[str, np.ndarray]:
    """Inputs of which some are in shared memory: the others are all raw (in order) or all typed.

    An input in shared memory is the server's own copy of the region's bytes, read when it converts.
    """
    model, inputs = request.model_name, request.inputs
    places = [_shm_place(t.parameters, regions, _what(model, t.name)) for t in inputs]
    if raw and len(raw) != places.count(None):
        raise InvalidInput(
            f"model {model!r}: {len(raw)} raw_input_contents for {places.count(None)} inputs not in "
            "shared memory; send one per such input, in the order of the inputs"
        )
    pending = iter(raw)
    feeds: dict[str, np.ndarray] = {}
    for tensor, place in zip(inputs, places, strict=True):
        if place is not None:
            array = place.region.decode(
                lambda data: _raw_array(tensor, data, model),  # noqa: B023 (called at once)
                place.offset,
                place.byte_size,
                _what(model, tensor.name),
            )
        else:
            array = _raw_array(tensor, next(pending), model) if raw else _typed_array(tensor, model)
        _add(feeds, tensor.name, array, model)
    return feeds


def _dtype(tensor: pb.ModelInferRequest.InferInputTensor, model: str) -> DType:
    dtype = _BY_NAME.get(tensor.datatype)
    return dtype if dtype is not None else dtypes.by_name(tensor.datatype, _what(model, tensor.name))


def _add(feeds: dict[str, np.ndarray], name: str, array: np.ndarray, model: str) -> None:
    if name in feeds:
        raise InvalidInput(f"{_what(model, name)} is given twice")
    feeds[name] = array


def array_from_contents(
    contents: pb.InferTensorContents, dtype: DType, shape: Sequence[int], model: str, name: str
) -> np.ndarray:
    """The array typed `contents` hold; FP16 (and any type without a typed field) must travel raw."""
    what = _what(model, name)
    entry = _TYPED.get(dtype.name)
    if entry is None:
        raise InvalidInput(
            f"{what}: datatype {dtype.name} has no typed contents; send it in raw_input_contents"
        )
    field, wide = entry
    values = getattr(contents, field)
    count = tensors.element_count(shape, what)
    if len(values) != count:
        raise InvalidInput(
            f"{what}: contents.{field} has {len(values)} values but shape {list(shape)} needs {count}"
        )
    if dtype is BYTES:
        return tensors.text_array(values, what).reshape(shape)
    return _narrow(np.fromiter(values, dtype=wide, count=count), dtype, field, what).reshape(shape)


def _narrow(array: np.ndarray, dtype: DType, field: str, what: str) -> np.ndarray:
    if array.dtype == dtype.numpy:
        return array
    low, high = _RANGE[dtype.name]
    if array.size and (int(array.min()) < low or int(array.max()) > high):
        raise InvalidInput(
            f"{what}: a value in contents.{field} is out of range for {dtype.name} ({low}..{high})"
        )
    return array.astype(dtype.numpy)


def _requested_outputs(
    outputs: Iterable[pb.ModelInferRequest.InferRequestedOutputTensor], model: str
) -> tuple[str, ...]:
    names = []
    for output in outputs:
        if output.parameters and "classification" in output.parameters:
            raise InvalidInput(f"model {model!r} output {output.name!r}: classification is not supported")
        names.append(output.name)
    return tuple(names)


def _request_options(
    params: Mapping[str, pb.InferParameter], model: str, timeout_s: float | None
) -> tuple[int, float | None]:
    """Priority and the effective timeout: the sooner of the gRPC deadline and `timeout` (microseconds)."""
    if "sequence_id" in params:
        raise InvalidInput(f"model {model!r}: sequence batching (parameter 'sequence_id') is not supported")
    priority = _int_param(params, "priority")
    timeout_us = _int_param(params, "timeout")
    if timeout_us > 0:
        own = timeout_us / 1e6
        timeout_s = own if timeout_s is None else min(own, timeout_s)
    return priority, timeout_s


def _int_param(params: Mapping[str, pb.InferParameter], key: str, where: str = "request") -> int:
    if key not in params:
        return 0
    param = params[key]
    kind = param.WhichOneof("parameter_choice")
    if kind not in ("int64_param", "uint64_param"):
        raise InvalidInput(f"{where} parameter {key!r} must be an int64 or uint64, got {kind or 'nothing'}")
    value = int(getattr(param, kind))
    if value < 0:
        raise InvalidInput(f"{where} parameter {key!r} must be >= 0, got {value}")
    return value


def output_places(request: pb.ModelInferRequest, regions: RegionLookup | None) -> dict[str, ShmPlace]:
    """The requested outputs to write into shared memory, by name (checked before the request runs)."""
    places: dict[str, ShmPlace] = {}
    for output in request.outputs:
        if output.parameters:
            what = f"model {request.model_name!r} output {output.name!r}"
            place = _shm_place(output.parameters, regions, what)
            if place is not None:
                place.region.check(place.offset, place.byte_size, what)  # before the request runs
                places[output.name] = place
    return places


def wants_final_flag(request: pb.ModelInferRequest) -> bool:
    """Whether a stream request asked for `triton_final_response` (`triton_enable_empty_final_response`)."""
    params = request.parameters
    return (
        bool(params)
        and "triton_enable_empty_final_response" in params
        and bool(params["triton_enable_empty_final_response"].bool_param)
    )


# -- ModelInfer: PredictResult -> response ---------------------------------------------------------


def infer_response(
    result: PredictResult, request_id: str, places: Mapping[str, ShmPlace] | None = None
) -> pb.ModelInferResponse:
    """Outputs as raw contents, plus the served version and its timing as response parameters.

    Outputs in `places` are written into shared memory and get no raw contents; they come after
    the others, so that output i still has raw_output_contents[i] (how tritonclient pairs them).
    """
    response = pb.ModelInferResponse(
        model_name=result.model, model_version=str(result.version), id=request_id
    )
    outputs, raw = response.outputs, response.raw_output_contents
    shared = []
    for name, array in result.outputs.items():
        place = places.get(name) if places else None
        if place is not None:
            shared.append((name, array, place))
            continue
        datatype = _NAME_BY_NUMPY.get(array.dtype) or dtypes.of_array(array).name
        outputs.add(name=name, datatype=datatype, shape=array.shape)
        raw.append(tensors.encode(array))
    for name, array, place in shared:
        _write_shared(response, name, array, place, result.model)
    timing, params = result.timing, response.parameters
    params["ortserve_version"].int64_param = result.version
    params["ortserve_queue_us"].int64_param = timing.queue_ns // 1000
    params["ortserve_compute_us"].int64_param = timing.compute_ns // 1000
    params["ortserve_batch_size"].int64_param = timing.batch_size
    params["ortserve_provider"].string_param = timing.provider
    return response


def _write_shared(
    response: pb.ModelInferResponse, name: str, array: np.ndarray, place: ShmPlace, model: str
) -> None:
    data = tensors.encode(array)
    place.region.write(place.offset, place.byte_size, data, f"model {model!r} output {name!r}")
    datatype = _NAME_BY_NUMPY.get(array.dtype) or dtypes.of_array(array).name
    tensor = response.outputs.add(name=name, datatype=datatype, shape=array.shape)
    tensor.parameters[SHM_REGION].string_param = place.region.name
    tensor.parameters[SHM_BYTE_SIZE].int64_param = len(data)
    tensor.parameters[SHM_OFFSET].int64_param = place.offset


def stream_error(
    request: pb.ModelInferRequest, message: str, final_flag: bool
) -> pb.ModelStreamInferResponse:
    """An in-band error: the id and model name let the client match it to its request."""
    answer = pb.ModelStreamInferResponse(error_message=message)
    infer = answer.infer_response
    infer.id, infer.model_name, infer.model_version = request.id, request.model_name, request.model_version
    if final_flag:
        infer.parameters[FINAL_RESPONSE].bool_param = True
    return answer


# -- metadata, config, statistics, repository index ------------------------------------------------


def tensor_metadata(spec: TensorSpec) -> pb.ModelMetadataResponse.TensorMetadata:
    return pb.ModelMetadataResponse.TensorMetadata(name=spec.name, datatype=spec.dtype.name, shape=spec.shape)


def model_metadata(record: ModelVersionRecord, versions: Iterable[int]) -> pb.ModelMetadataResponse:
    signature = record.signature
    return pb.ModelMetadataResponse(
        name=record.model,
        versions=[str(v) for v in versions],
        platform=PLATFORM,
        inputs=[tensor_metadata(s) for s in signature.inputs],
        outputs=[tensor_metadata(s) for s in signature.outputs],
    )


def max_batch_size(record: ModelVersionRecord) -> int:
    """The batcher's limit: 0 without a batch axis or when set to 0, else the version's or the default."""
    return batcher_config(record).max_batch_size


def model_config(slot: VersionSlot) -> mc.ModelConfig:
    """Triton's view of one version: with max_batch_size > 0 the dims leave out the batch axis."""
    record = slot.record
    batch = max_batch_size(record)
    inputs, outputs = _config_tensors(record.signature, skip=1 if batch else 0)
    providers = (
        slot.session.providers if slot.session is not None else tuple(p.name for p in record.providers)
    )
    config = mc.ModelConfig(
        name=record.model,
        platform=PLATFORM,
        backend=BACKEND,
        max_batch_size=batch,
        input=inputs,
        output=outputs,
        instance_group=[mc.ModelInstanceGroup(name=record.model, count=1, kind=_instance_kind(providers))],
        version_policy=mc.ModelVersionPolicy(latest=mc.ModelVersionPolicy.Latest(num_versions=1)),
        default_model_filename="model.onnx",
    )
    if batch > 1:
        config.dynamic_batching.CopyFrom(_dynamic_batching(record))
    _config_parameters(config.parameters, record, providers)
    return config


def _config_tensors(signature: Signature, skip: int) -> tuple[list[mc.ModelInput], list[mc.ModelOutput]]:
    inputs = [
        mc.ModelInput(name=s.name, data_type=_CONFIG_TYPE[s.dtype], dims=s.shape[skip:])
        for s in signature.inputs
    ]
    outputs = [
        mc.ModelOutput(name=s.name, data_type=_CONFIG_TYPE[s.dtype], dims=s.shape[skip:])
        for s in signature.outputs
    ]
    return inputs, outputs


def _instance_kind(providers: Sequence[str]) -> mc.ModelInstanceGroup.Kind.ValueType:
    if providers and providers[0] in GPU_PROVIDERS:
        return mc.ModelInstanceGroup.KIND_GPU
    return mc.ModelInstanceGroup.KIND_CPU


def _dynamic_batching(record: ModelVersionRecord) -> mc.ModelDynamicBatching:
    batching = record.batching
    return mc.ModelDynamicBatching(
        preferred_batch_size=batching.preferred_batch_sizes,
        max_queue_delay_microseconds=batching.max_queue_delay_us,
        preserve_ordering=True,
        default_queue_policy=mc.ModelQueuePolicy(max_queue_size=batching.max_queue_size),
    )


def _config_parameters(params: Any, record: ModelVersionRecord, providers: Sequence[str]) -> None:
    params["execution_providers"].string_value = ",".join(providers)
    params["ortserve_version"].string_value = str(record.version)
    params["ortserve_sha256"].string_value = record.sha256
    params["ortserve_opset"].string_value = str(record.opset)


def _duration(source: Duration) -> pb.StatisticDuration:
    return pb.StatisticDuration(count=source.count, ns=source.ns)


def model_statistics(slot: VersionSlot) -> pb.ModelStatistics:
    stats: VersionStats = slot.stats
    return pb.ModelStatistics(
        name=slot.record.model,
        version=str(slot.record.version),
        last_inference=stats.last_inference_ms,
        inference_count=stats.inference_count,
        execution_count=stats.execution_count,
        inference_stats=pb.InferStatistics(
            success=_duration(stats.success),
            fail=_duration(stats.fail),
            queue=_duration(stats.queue),
            compute_input=_duration(stats.compute_input),
            compute_infer=_duration(stats.compute_infer),
            compute_output=_duration(stats.compute_output),
        ),
        batch_stats=[
            pb.InferBatchStatistics(
                batch_size=size,
                compute_input=_duration(batch.compute_input),
                compute_infer=_duration(batch.compute_infer),
                compute_output=_duration(batch.compute_output),
            )
            for size, batch in sorted(stats.batches.items())
        ],
    )


def index_entry(slot: VersionSlot) -> pb.RepositoryIndexResponse.ModelIndex:
    """READY, LOADING or UNAVAILABLE (registered but not loaded, failed, retired), with the reason."""
    state = slot.state
    reason = slot.error or ("" if state is VersionState.READY else state.value)
    return pb.RepositoryIndexResponse.ModelIndex(
        name=slot.record.model, version=str(slot.record.version), state=_STATE_NAMES[state], reason=reason
    )


# -- RepositoryModelLoad ---------------------------------------------------------------------------


def uploaded_model(model: str, params: Mapping[str, pb.ModelRepositoryParameter]) -> bytes | None:
    """The bytes of a `file:<version>/<name>.onnx` parameter (tritonclient's load_model(files=...)).

    None when the request carries no file. One ONNX file at most; the registry numbers the new
    version itself, so the version directory in the key is not honoured.
    """
    files = {key: value for key, value in params.items() if key.startswith("file:")}
    if not files:
        return None
    if len(files) != 1:
        raise InvalidInput(f"model {model!r}: load one model file at a time, got {', '.join(sorted(files))}")
    ((key, value),) = files.items()
    if not key.endswith(".onnx") or value.WhichOneof("parameter_choice") != "bytes_param":
        raise InvalidInput(f"model {model!r}: parameter {key!r} must carry the bytes of an .onnx file")
    return value.bytes_param


__all__ = [
    "array_from_contents",
    "index_entry",
    "infer_response",
    "model_config",
    "model_metadata",
    "model_statistics",
    "output_places",
    "predict_call",
    "stream_error",
    "uploaded_model",
    "wants_final_flag",
]
