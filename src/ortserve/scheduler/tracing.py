"""OpenTelemetry spans of the batcher: each request's time in the queue, and each batch with its
ONNX Runtime run, linked to every request it computed.

Only imported when tracing is configured (the `otel` extra); without it the batcher holds None
and pays one attribute test per request. Spans are recorded after the fact from the timestamps the
batcher keeps anyway (monotonic nanoseconds, converted to the wall clock), so tracing adds no
timing calls to the computation.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, Tracer

from ortserve.scheduler.calls import BatchSpan

TRACER_NAME = "ortserve.scheduler"


class BatchTracer:
    """Records queue, batch and run spans for one version's batcher."""

    def __init__(self, tracer: Tracer, model: str, version: int) -> None:
        self._tracer = tracer
        self._attributes: dict[str, str | int] = {"ortserve.model": model, "ortserve.model_version": version}
        self._wall_offset_ns = time.time_ns() - time.monotonic_ns()

    @staticmethod
    def current() -> SpanContext | None:
        """The calling request's span context, kept with its queue entry."""
        context = trace.get_current_span().get_span_context()
        return context if context.is_valid else None

    def batch(self, queued: Sequence[tuple[SpanContext | None, int]], span: BatchSpan) -> None:
        """A computed (or failed) batch: a queue span per traced request (its context and enqueue
        time), then the batch, linked to each of them, and its run."""
        wall = self._wall_offset_ns
        for parent, enqueued_ns in queued:
            if parent is not None:
                queue = self._tracer.start_span(
                    "ortserve.queue",
                    context=trace.set_span_in_context(trace.NonRecordingSpan(parent)),
                    start_time=enqueued_ns + wall,
                    attributes=self._attributes,
                )
                queue.end(end_time=span.taken_ns + wall)
        self._batch([Link(p) for p, _ in queued if p is not None], span, parent=None)

    def immediate(self, span: BatchSpan) -> None:
        """A request computed at once on the idle fast path: its batch is a child of its own span."""
        self._batch([], span, parent=trace.set_span_in_context(trace.get_current_span()))

    def _batch(self, links: list[Link], span: BatchSpan, parent: Context | None) -> None:
        start = span.taken_ns + self._wall_offset_ns
        stack_ns, run_ns, split_ns = span.ns
        attributes = {**self._attributes, "ortserve.batch.rows": span.rows}
        attributes["ortserve.batch.flush"] = span.reason
        batch = self._tracer.start_span(
            "ortserve.batch", context=parent, links=links, start_time=start, attributes=attributes
        )
        run = self._tracer.start_span(
            "ortserve.run",
            context=trace.set_span_in_context(batch),
            start_time=start + stack_ns,
            attributes=self._attributes,
        )
        if span.error is not None:
            run.record_exception(span.error)
            run.set_status(trace.Status(trace.StatusCode.ERROR, type(span.error).__name__))
        run.end(end_time=start + stack_ns + run_ns)
        batch.end(end_time=start + stack_ns + run_ns + split_ns)
