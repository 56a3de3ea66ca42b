"""Our API's messages to and from numpy and frozen records."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import numpy as np
from google.protobuf.timestamp_pb2 import Timestamp

from ortserve import dtypes, tensors
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.errors import InvalidInput
from ortserve.records import (
    AliasRecord,
    AuditEventRecord,
    BatchingSettings,
    Manifest,
    ModelRecord,
    ModelVersionRecord,
    ProviderSpec,
    SessionSettings,
    TrafficPolicy,
    VersionState,
)
from ortserve.scheduler.calls import PredictCall, PredictResult
from ortserve.scheduler.events import ModelEvent
from ortserve.scheduler.shadow import ShadowStats
from ortserve.scheduler.shm import RegionLookup
from ortserve.signature import Signature, TensorSpec
from ortserve.toolkit.messages import recipe_to_pb, report_to_pb

_ENUM_BY_DTYPE = {
    d: tpb.DataType.Value("DATA_TYPE_" + ("STRING" if d is dtypes.BYTES else d.name)) for d in dtypes.ALL
}
_DTYPE_BY_ENUM = {v: k for k, v in _ENUM_BY_DTYPE.items()}


def array_from_tensor(tensor: tpb.Tensor, model: str, regions: RegionLookup | None = None) -> np.ndarray:
    """The input's array: over `raw_data`, or a copy of bytes in a shared memory region of the caller."""
    return _array(tensor, f"model {model!r} input {tensor.name!r}", regions)


def _array(tensor: tpb.Tensor, what: str, regions: RegionLookup | None) -> np.ndarray:
    dtype = _DTYPE_BY_ENUM.get(tensor.data_type)
    if dtype is None:
        raise InvalidInput(f"{what}: data_type {tensor.data_type} is not a supported DataType")
    if tensor.HasField("shared_memory"):
        return _shared_array(tensor, dtype, regions, what)
    return tensors.decode(tensor.raw_data, dtype, tensor.shape, what, text=True)


def _shared_array(
    tensor: tpb.Tensor, dtype: dtypes.DType, regions: RegionLookup | None, what: str
) -> np.ndarray:
    ref = tensor.shared_memory
    if tensor.raw_data:
        raise InvalidInput(f"{what} has both raw_data and shared_memory; send one")
    if not ref.region:
        raise InvalidInput(f"{what}: shared_memory.region is empty")
    if regions is None:
        raise InvalidInput(f"{what}: shared memory is not available here")
    return regions(ref.region).decode(
        lambda data: tensors.decode(data, dtype, tensor.shape, what, text=True),  # type: ignore[arg-type]
        ref.offset,
        ref.byte_size,
        what,
    )


def samples_from_pb(messages: Sequence[tpb.Tensor], what: str) -> dict[str, np.ndarray] | None:
    """Sample or calibration inputs by name (`what`: "sample input"); None when there are none."""
    out: dict[str, np.ndarray] = {}
    for tensor in messages:
        name = f"{what} {tensor.name!r}"
        if tensor.name in out:
            raise InvalidInput(f"{name} is given twice")
        out[tensor.name] = _array(tensor, name, None)  # shared memory: "not available here"
    return out or None


def predict_call(
    request: ipb.PredictRequest, timeout_s: float | None, regions: RegionLookup | None = None
) -> PredictCall:
    """The core's call; `regions` finds the caller's shared memory regions that inputs may name."""
    if not request.model:
        raise InvalidInput("request names no model")
    feeds: dict[str, np.ndarray] = {}
    for tensor in request.inputs:
        if tensor.name in feeds:
            raise InvalidInput(f"model {request.model!r} input {tensor.name!r} is given twice")
        feeds[tensor.name] = array_from_tensor(tensor, request.model, regions)
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
    response = ipb.PredictResponse()
    fill_predict_response(response, result)
    return response


def fill_predict_response(response: ipb.PredictResponse, result: PredictResult) -> None:
    """Write `result` into `response` in place (a stream answer embeds it without a copy)."""
    for name, array in result.outputs.items():
        tensor = response.outputs.add(name=name, data_type=_ENUM_BY_DTYPE[dtypes.of_array(array)])
        tensor.shape.extend(array.shape)
        tensor.raw_data = tensors.encode(array)
    response.model = result.model
    response.model_version = result.version
    timing, out = result.timing, response.timing
    out.queue_us = timing.queue_ns // 1000
    out.compute_us = timing.compute_ns // 1000
    out.batch_size = timing.batch_size
    out.provider = timing.provider


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
    fallback: tuple[str, ...] = (),
) -> mpb.ModelVersion:
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
        create_time=_timestamp(record.created_at),
        active_providers=active,
        fallback_providers=fallback,
        derived_from=record.derived_from or 0,
        recipe=recipe_to_pb(record.recipe) if record.recipe is not None else None,
        report=report_to_pb(record.report) if record.report is not None else None,
        sample_rows=record.sample_rows,
    )


def model_to_pb(
    record: ModelRecord,
    versions: list[mpb.ModelVersion],
    aliases: Sequence[AliasRecord] = (),
    policy: TrafficPolicy | None = None,
    shadow: ShadowStats | None = None,
) -> mpb.Model:
    model = mpb.Model(
        name=record.name,
        description=record.description,
        versions=versions,
        create_time=_timestamp(record.created_at),
        aliases=[alias_to_pb(a) for a in aliases],
    )
    if policy is not None:
        model.traffic.CopyFrom(policy_to_pb(policy))
    if shadow is not None:
        model.shadow.CopyFrom(shadow_to_pb(shadow))
    return model


def alias_to_pb(alias: AliasRecord) -> mpb.Alias:
    return mpb.Alias(
        name=alias.name,
        version=alias.version,
        previous_version=alias.previous_version or 0,
        update_time=_timestamp(alias.updated_at),
        updated_by=alias.updated_by,
    )


def policy_to_pb(policy: TrafficPolicy) -> mpb.TrafficPolicy:
    return mpb.TrafficPolicy(
        entries=[mpb.TrafficEntry(target=e.target, weight=e.weight) for e in policy.entries],
        sticky=policy.sticky,
        shadow_target=policy.shadow_target,
        shadow_share=policy.shadow_share,
    )


def shadow_to_pb(stats: ShadowStats) -> mpb.ShadowReport:
    return mpb.ShadowReport(
        shadow_version=stats.shadow_version,
        compared=stats.compared,
        errors=stats.errors,
        max_abs_diff=stats.max_abs_diff,
        argmax_agreement=stats.argmax_agreement,
    )


def audit_to_pb(event: AuditEventRecord) -> mpb.AuditEvent:
    return mpb.AuditEvent(
        time=_timestamp(event.at),
        actor=event.actor,
        action=event.action,
        model=event.model,
        version=event.version or 0,
        before=_json(event.before),
        after=_json(event.after),
    )


def event_to_pb(event: ModelEvent) -> mpb.ModelEvent:
    stamp = Timestamp()
    stamp.FromNanoseconds(event.time_ns)
    state = mpb.VersionState.Value("VERSION_STATE_" + (event.state.name if event.state else "UNSPECIFIED"))
    return mpb.ModelEvent(
        kind=event.kind,
        model=event.model,
        version=event.version,
        state=state,
        detail=event.detail,
        revision=event.revision,
        time=stamp,
    )


def _json(data: Mapping[str, Any] | None) -> str:
    return "" if data is None else json.dumps(_plain(data), sort_keys=True, default=str)


def _plain(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def _timestamp(at: datetime) -> Timestamp:
    stamp = Timestamp()
    stamp.FromDatetime(at)
    return stamp


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
        samples=samples_from_pb(m.samples, "sample input"),
    )
