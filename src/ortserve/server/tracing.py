"""OpenTelemetry tracing of RPCs (the `otel` extra), off unless `otlp_endpoint` is set.

Each RPC gets a SERVER span whose parent comes from the caller's W3C `traceparent`/`tracestate`
metadata; inside it the batcher records the request's time in the queue, and each batch (linked to
every request it computed) with its ONNX Runtime run (scheduler/tracing.py). When tracing is off
nothing here is imported and the hot path is unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Callable
from typing import Any

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.trace import SpanKind, Tracer
from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator

from ortserve.server.errors import code_of
from ortserve.server.rpc import Context

PROPAGATOR = TraceContextTextMapPropagator()


def otlp_provider(endpoint: str, service_name: str) -> TracerProvider:
    """Spans batched and exported over OTLP/gRPC to `endpoint` (e.g. http://collector:4317)."""
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": service_name}))
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    return provider


class RpcTracing:
    """Wraps servicer methods in a SERVER span each, continuing the caller's trace."""

    def __init__(self, tracer: Tracer) -> None:
        self._tracer = tracer

    def wrap(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        service, _, name = method.lstrip("/").partition("/")
        attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
        tracer = self._tracer

        def start(context: Context) -> trace.Span:
            carrier = {k: v for k, v in context.invocation_metadata() or () if isinstance(v, str)}
            parent = PROPAGATOR.extract(carrier)
            return tracer.start_span(method.lstrip("/"), parent, SpanKind.SERVER, attributes)

        if inspect.isasyncgenfunction(behavior):

            async def streamed(request: Any, context: Context) -> AsyncIterator[Any]:
                span = start(context)
                with trace.use_span(
                    span, end_on_exit=True, record_exception=False, set_status_on_exception=False
                ):
                    try:
                        async for response in behavior(request, context):
                            yield response
                    except Exception as exc:
                        _failed(span, exc)
                        raise

            return streamed

        async def unary(request: Any, context: Context) -> Any:
            span = start(context)
            with trace.use_span(
                span, end_on_exit=True, record_exception=False, set_status_on_exception=False
            ):
                try:
                    return await behavior(request, context)
                except Exception as exc:
                    _failed(span, exc)
                    raise

        return unary


def _failed(span: trace.Span, exc: Exception) -> None:
    code = code_of(exc)
    span.set_attribute("rpc.grpc.status_code", code.value[0])
    span.set_status(trace.Status(trace.StatusCode.ERROR, code.name))
