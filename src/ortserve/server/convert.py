"""Our API's messages to and from numpy and frozen records."""

from __future__ import annotations

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from ortserve import dtypes, tensors
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.errors import InvalidInput
from ortserve.registry.records import (
    BatchingSettings,
    Manifest,
    ModelRecord,
    ModelVersionRecord,
    ProviderSpec,
    SessionSettings,
    VersionState,
)
from ortserve.runtime.signature import Signature, TensorSpec
from ortserve.scheduler.calls import PredictCall, PredictResult

_ENUM_BY_DTYPE = {
    d: tpb.DataType.Value("DATA_TYPE_" + ("STRING" if d is dtypes.BYTES else d.name)) for d in dtypes.ALL
}
_DTYPE_BY_ENUM = {v: k for k, v in _ENUM_BY_DTYPE.items()}


def array_from_tensor(tensor: tpb.Tensor, model: str) -> np.ndarray:
    what = f"model {model!r} input {tensor.name!r}"
    dtype = _DTYPE_BY_ENUM.get(tensor.data_type)
    if dtype is None:
        raise InvalidInput(f"{what}: data_type {tensor.data_type} is not a supported DataType")
    return tensors.decode(tensor.raw_data, dtype, tensor.shape, what, text=True)


def tensor_from_array(name: str, array: np.ndarray) -> tpb.Tensor:
    return tpb.Tensor(
        name=name,
        data_type=_ENUM_BY_DTYPE[dtypes.of_array(array)],
        shape=array.shape,
        raw_data=tensors.encode(array),
    )


def predict_call(request: ipb.PredictRequest, timeout_s: float | None) -> PredictCall:
    if not request.model:
        raise InvalidInput("request names no model")
    feeds: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name in feeds:
            raise InvalidInput(f"model {request.model!r} input {tensor.name!r} is given twice")
        feeds[tensor.name] = array_from_tensor(tensor, request.model)
    if request.timeout_us:
        own = request.timeout_us / 1e6
        timeout_s = own if timeout_s is None else min(own, timeout_s)
    return PredictCall(
        model=request.model,
        selector=request.version,
        feeds=feeds,
        outputs=tuple(request.output_names),
        routing_key=request.routing_key,
        priority=request.priority,
        timeout_s=timeout_s,
    )


def predict_response(result: PredictResult) -> ipb.PredictResponse:
    timing = result.timing
    return ipb.PredictResponse(
        outputs=[tensor_from_array(name, array) for name, array in result.outputs.items()],
        model=result.model,
        model_version=result.version,
        timing=ipb.Timing(
            queue_us=timing.queue_ns // 1000,
            compute_us=timing.compute_ns // 1000,
            batch_size=timing.batch_size,
            provider=timing.provider,
        ),
    )


def spec_to_pb(spec: TensorSpec) -> tpb.TensorSpec:
    return tpb.TensorSpec(name=spec.name, data_type=_ENUM_BY_DTYPE[spec.dtype], shape=spec.shape)


def signature_to_pb(signature: Signature) -> mpb.Signature:
    return mpb.Signature(
        inputs=[spec_to_pb(s) for s in signature.inputs],
        outputs=[spec_to_pb(s) for s in signature.outputs],
        batch_axis=signature.batch_axis,
    )


def version_to_pb(
    record: ModelVersionRecord,
    state: VersionState | None = None,
    error: str = "",
    active: tuple[str, ...] = (),
) -> mpb.ModelVersion:
    created = Timestamp()
    created.FromDatetime(record.created_at)
    state = state or record.state
    return mpb.ModelVersion(
        model=record.model,
        version=record.version,
        sha256=record.sha256,
        size_bytes=record.size_bytes,
        opset=record.opset,
        producer=record.producer,
        signature=signature_to_pb(record.signature),
        providers=[mpb.ExecutionProvider(name=p.name, options=dict(p.options)) for p in record.providers],
        batching=batching_to_pb(record.batching),
        session=session_to_pb(record.session),
        state=mpb.VersionState.Value("VERSION_STATE_" + state.name),
        error=error or record.error,
        description=record.description,
        labels=dict(record.labels),
        created_by=record.created_by,
        create_time=created,
        active_providers=active,
    )


def model_to_pb(record: ModelRecord, versions: list[mpb.ModelVersion]) -> mpb.Model:
    created = Timestamp()
    created.FromDatetime(record.created_at)
    return mpb.Model(name=record.name, description=record.description, versions=versions, create_time=created)


def batching_to_pb(b: BatchingSettings) -> mpb.BatchingConfig:
    return mpb.BatchingConfig(
        max_batch_size=b.max_batch_size,
        max_queue_delay_us=b.max_queue_delay_us,
        preferred_batch_sizes=b.preferred_batch_sizes,
        max_queue_size=b.max_queue_size,
        max_concurrent_batches=b.max_concurrent_batches,
    )


def session_to_pb(s: SessionSettings) -> mpb.SessionConfig:
    return mpb.SessionConfig(
        graph_optimization_level=s.graph_optimization_level,
        intra_op_num_threads=s.intra_op_num_threads,
        inter_op_num_threads=s.inter_op_num_threads,
        execution_mode=s.execution_mode,
        disable_memory_pattern=not s.enable_mem_pattern,
        disable_cpu_mem_arena=not s.enable_cpu_mem_arena,
    )


def manifest_from_pb(m: rpb.RegisterManifest, created_by: str) -> Manifest:
    defaults = BatchingSettings()
    batching = BatchingSettings(
        max_batch_size=m.batching.max_batch_size if m.batching.HasField("max_batch_size") else None,
        max_queue_delay_us=m.batching.max_queue_delay_us or defaults.max_queue_delay_us,
        preferred_batch_sizes=tuple(m.batching.preferred_batch_sizes),
        max_queue_size=m.batching.max_queue_size or defaults.max_queue_size,
        max_concurrent_batches=m.batching.max_concurrent_batches or defaults.max_concurrent_batches,
    )
    session = SessionSettings(
        graph_optimization_level=m.session.graph_optimization_level or "all",
        intra_op_num_threads=m.session.intra_op_num_threads,
        inter_op_num_threads=m.session.inter_op_num_threads,
        execution_mode=m.session.execution_mode or "sequential",
        enable_mem_pattern=not m.session.disable_memory_pattern,
        enable_cpu_mem_arena=not m.session.disable_cpu_mem_arena,
    )
    return Manifest(
        name=m.name,
        size_bytes=m.size_bytes,
        sha256=m.sha256.lower(),
        description=m.description,
        labels=dict(m.labels),
        providers=tuple(ProviderSpec(p.name, dict(p.options)) for p in m.providers),
        batching=batching,
        session=session,
        created_by=created_by,
    )
