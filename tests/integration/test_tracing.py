"""OpenTelemetry: each RPC a SERVER span continuing the caller's W3C trace, each request's time in
the queue as its child, and each batch (with its ONNX Runtime run) linked to every request in it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from grpc import aio
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.client.client import to_tensor
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models

CALLERS = 16


@pytest.fixture
async def traced(tmp_path: Path) -> AsyncIterator[tuple[ipb_grpc.InferenceServiceStub, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    # inline_compute_us 0: every batch goes through the queue, so queue spans exist
    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), inline_compute_us=0)
    server = OrtServer(config, tracer_provider=provider)
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path)
    server.parts.control.registry.register_file(path, "linear")
    await server.start()
    async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
        yield ipb_grpc.InferenceServiceStub(channel), exporter
    await server.stop(0)


def traceparent(n: int) -> tuple[int, str]:
    trace_id = 0xABC0_0000_0000_0000_0000_0000_0000_0000 + n
    return trace_id, f"00-{trace_id:032x}-{n + 1:016x}-01"


async def test_requests_continue_their_callers_trace_through_queue_batch_and_run(
    traced: tuple[ipb_grpc.InferenceServiceStub, InMemorySpanExporter],
) -> None:
    stub, exporter = traced
    request = ipb.PredictRequest(model="linear", inputs=[to_tensor("x", np.ones((1, 16), np.float32))])
    ids = [traceparent(n) for n in range(CALLERS)]
    await asyncio.gather(
        *(stub.Predict(request, metadata=(("traceparent", header),), timeout=10) for _, header in ids)
    )
    spans = exporter.get_finished_spans()
    rpcs = {s.context.trace_id: s for s in spans if s.name == "ortserve.api.v1.InferenceService/Predict"}
    assert set(rpcs) == {trace_id for trace_id, _ in ids}  # every caller's trace was continued
    for trace_id, header in ids:
        rpc = rpcs[trace_id]
        assert rpc.parent is not None and f"{rpc.parent.span_id:016x}" == header.split("-")[2]
        assert rpc.attributes is not None and rpc.attributes["rpc.method"] == "Predict"
    queues = [s for s in spans if s.name == "ortserve.queue"]
    assert {q.context.trace_id for q in queues} == set(rpcs)
    for queue in queues:
        assert (
            queue.parent is not None and queue.parent.span_id == rpcs[queue.context.trace_id].context.span_id
        )
    batches = [s for s in spans if s.name == "ortserve.batch"]
    linked = {link.context.span_id for b in batches for link in b.links}
    assert linked == {rpc.context.span_id for rpc in rpcs.values()}  # each request is in one batch
    assert sum(_rows(b) for b in batches) == CALLERS
    runs = [s for s in spans if s.name == "ortserve.run"]
    assert {r.parent.span_id for r in runs if r.parent} == {b.context.span_id for b in batches}
    for run in runs:
        assert run.start_time is not None and run.end_time is not None and run.end_time >= run.start_time


def _rows(span: ReadableSpan) -> int:
    assert span.attributes is not None
    return int(span.attributes["ortserve.batch.rows"])  # type: ignore[arg-type]


async def test_a_failed_rpc_records_its_status_code(
    traced: tuple[ipb_grpc.InferenceServiceStub, InMemorySpanExporter],
) -> None:
    stub, exporter = traced
    with pytest.raises(aio.AioRpcError):
        await stub.Predict(ipb.PredictRequest(model="absent"), timeout=10)
    (rpc,) = [s for s in exporter.get_finished_spans() if s.name.endswith("/Predict")]
    assert rpc.attributes is not None and rpc.attributes["rpc.grpc.status_code"] == 5  # NOT_FOUND
    assert rpc.status.description == "NOT_FOUND"
