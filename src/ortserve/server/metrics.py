"""Prometheus metrics, served at /metrics by server/http.py; one registry per server for tests."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge
from prometheus_client.core import GaugeMetricFamily, Metric

from ortserve.errors import NotFound
from ortserve.records import VersionState
from ortserve.runtime.load_cache import RESULTS, Result
from ortserve.scheduler.batch_queue import Flush
from ortserve.server.loop_metrics import Buckets, LoopCollector

if TYPE_CHECKING:
    from ortserve.scheduler.pool import ModelPool, VersionSlot

_SECONDS = (0.0001, 0.00025, 0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_ROWS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
_VERSION = ["model", "version"]


class Metrics:
    """What operators watch: RPCs by method and status; per model version, requests, queueing,
    compute, batch sizes, queue depth, in-flight requests, errors by status code and flush reasons.

    What is updated per request lives in loop_metrics (event loop only, no locks); queue depth
    and flush reasons are also updated by the batcher's threads and stay on prometheus_client.
    """

    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        loop = LoopCollector(r)
        self.rpc_total = loop.counter("ortserve_rpc_total", "RPCs handled", ["method", "code"])
        self.stream_message_errors = loop.counter(
            "ortserve_stream_message_errors_total",
            "Stream messages answered with an in-band error, by method and status code",
            ["method", "code"],
        )
        self.poll_failures = loop.counter(
            "ortserve_registry_poll_failures_total", "Registry polls that failed, by error", ["error"]
        )
        self.rpc_seconds = loop.histogram(
            "ortserve_rpc_duration_seconds", "RPC handling time", ["method"], _SECONDS
        )
        self.request_seconds = loop.histogram(
            "ortserve_request_duration_seconds", "Inference request time in the core", _VERSION, _SECONDS
        )
        self.queue_seconds = loop.histogram(
            "ortserve_queue_duration_seconds", "Time requests wait for a batch", _VERSION, _SECONDS
        )
        self.compute_seconds = loop.histogram(
            "ortserve_compute_duration_seconds",
            "Batch compute time (stack, run, split), by the execution provider that ran it",
            [*_VERSION, "provider"],
            _SECONDS,
        )
        self.provider_fallback = loop.gauge(
            "ortserve_provider_fallback",
            "1 per loaded version whose session lost preferred providers: requested is the preference, "
            "active what the session runs on",
            [*_VERSION, "requested", "active"],
        )
        self.batch_rows = loop.histogram("ortserve_batch_size", "Rows per executed batch", _VERSION, _ROWS)
        self.inflight = loop.gauge("ortserve_inflight_requests", "Requests in the core", _VERSION)
        self.errors = loop.counter(
            "ortserve_request_errors_total", "Failed inference requests by status code", [*_VERSION, "code"]
        )
        self.queue_depth = Gauge("ortserve_queue_depth", "Requests waiting for a batch", _VERSION, registry=r)
        self.flushes = Counter(
            "ortserve_batch_flush_total", "Batches closed, by reason", [*_VERSION, "reason"], registry=r
        )

        # Loads by what the optimized-model cache did: each series exists from the start, at 0.
        self.load_cache = Counter(
            "ortserve_load_cache", "Model loads by optimized-model cache result", ["result"], registry=r
        )
        for result in RESULTS:
            self.load_cache.labels(result)

        self.shadow = ShadowMetrics(r)
        self.loop_tasks = LoopTasks(r)

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_total.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def poll_failed(self, kind: str) -> None:
        self.poll_failures.labels(kind).inc()

    def load_cache_result(self, result: Result) -> None:
        self.load_cache.labels(result).inc()

    def stream_message_failed(self, method: str, code: str) -> None:
        self.stream_message_errors.labels(method, code).inc()

    def for_version(self, model: str, version: int) -> VersionMetrics:
        return VersionMetrics(self, model, str(version))

    def watch_pool(self, pool: ModelPool) -> None:
        """Publish the pool's versions (state, memory, queue capacity) and registry revision."""
        self.registry.register(PoolCollector(pool))


class VersionMetrics:
    """The label children of one version, bound once so the hot path does no label lookups."""

    def __init__(self, metrics: Metrics, model: str, version: str) -> None:
        self._metrics = metrics
        self._labels = (model, version)
        self._request = metrics.request_seconds.labels(model, version)
        self._queue = metrics.queue_seconds.labels(model, version)
        # Bound to the session's provider when the version loads; batches only run after that.
        self._compute = Buckets(_SECONDS)
        self._rows = metrics.batch_rows.labels(model, version)
        self._depth = metrics.queue_depth.labels(model, version)
        self._inflight = metrics.inflight.labels(model, version)
        self._flushes: dict[str, Counter] = {r: metrics.flushes.labels(model, version, r) for r in Flush}

    def queue_depth(self, depth: int) -> None:
        self._depth.set(depth)

    def flushed(self, reason: str) -> None:
        self._flushes[reason].inc()

    def batch(self, rows: int, compute_ns: int) -> None:
        self._rows.observe(rows)
        self._compute.observe(compute_ns / 1e9)

    def started(self) -> None:
        self._inflight.inc()

    def loaded(self, requested: tuple[str, ...], active: tuple[str, ...], fallback: tuple[str, ...]) -> None:
        """A session is ready: bind compute to its provider and publish a fallback, if any."""
        m = self._metrics
        self._compute = m.compute_seconds.labels(*self._labels, active[0])
        m.provider_fallback.forget(*self._labels)
        if fallback:
            m.provider_fallback.labels(*self._labels, ",".join(requested), ",".join(active)).inc()

    def unloaded(self) -> None:
        self._metrics.provider_fallback.forget(*self._labels)

    def close(self) -> None:
        """The version left this server: remove its series, so label cardinality stays bounded."""
        m = self._metrics
        loop_families = (
            m.request_seconds,
            m.queue_seconds,
            m.compute_seconds,
            m.batch_rows,
            m.inflight,
            m.provider_fallback,
        )
        for family in (*loop_families, m.errors):
            family.forget(*self._labels)
        m.queue_depth.remove(*self._labels)
        for reason in Flush:
            m.flushes.remove(*self._labels, reason)
        m.shadow.forget(*self._labels)

    def finished(self, seconds: float, queue_ns: int, code: str) -> None:
        self._inflight.dec()
        self._request.observe(seconds)
        if code == "OK":
            self._queue.observe(queue_ns / 1e9)
        else:
            self._metrics.errors.labels(*self._labels, code).inc()


class ShadowMetrics:
    """Shadow comparisons per model and shadow version."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._compared = Counter(
            "ortserve_shadow_compared_total",
            "Requests copied to a shadow and compared",
            _VERSION,
            registry=registry,
        )
        self._errors = Counter(
            "ortserve_shadow_errors_total", "Shadow requests that failed", _VERSION, registry=registry
        )
        self._diff = Gauge(
            "ortserve_shadow_max_abs_diff",
            "Largest absolute output difference seen",
            _VERSION,
            registry=registry,
        )
        self._agreement = Gauge(
            "ortserve_shadow_argmax_agreement",
            "Fraction of rows whose argmax agrees",
            _VERSION,
            registry=registry,
        )

    def compared(self, model: str, shadow_version: int, max_abs_diff: float, agreement: float) -> None:
        labels = (model, str(shadow_version))
        self._compared.labels(*labels).inc()
        self._diff.labels(*labels).set(max_abs_diff)
        self._agreement.labels(*labels).set(agreement)

    def failed(self, model: str, shadow_version: int) -> None:
        self._errors.labels(model, str(shadow_version)).inc()

    def forget(self, model: str, version: str) -> None:
        for family in (self._compared, self._errors, self._diff, self._agreement):
            family.remove(model, version)


class LoopTasks:
    """ortserve_event_loop_tasks: unfinished asyncio tasks on the event loop that built the metrics
    (in-flight RPCs and background work), counted when Prometheus scrapes; absent without a loop."""

    def __init__(self, registry: CollectorRegistry) -> None:
        try:
            self._loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:
            self._loop = None
        registry.register(self)

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily("ortserve_event_loop_tasks", "Unfinished asyncio tasks on the event loop")
        if self._loop is not None:
            # all_tasks copies the loop's weak set with retries, so reading it from the scrape
            # thread is safe.
            family.add_metric([], len(asyncio.all_tasks(self._loop)))
        yield family


class PoolCollector:
    """Read from the pool when Prometheus scrapes: per version on this server its state (one series
    per state, 1 for the current one, as kube-state-metrics does), the memory its session took and
    its queue's capacity; and the registry revision this server has converged on. Retired versions
    leave the pool, so their series go with them."""

    def __init__(self, pool: ModelPool) -> None:
        self._pool = pool

    def collect(self) -> Iterator[Metric]:
        state = GaugeMetricFamily(
            "ortserve_model_version_state",
            "1 for the version's state on this server, 0 for the other states",
            labels=[*_VERSION, "state"],
        )
        memory = GaugeMetricFamily(
            "ortserve_model_version_memory_bytes",
            "Memory the loaded version's session took (resident set growth at load)",
            labels=_VERSION,
        )
        capacity = GaugeMetricFamily(
            "ortserve_queue_capacity",
            "Requests a version's queue holds (its max_queue_size)",
            labels=_VERSION,
        )
        for slot in self._slots():
            labels = [slot.record.model, str(slot.record.version)]
            current = slot.state
            for each in VersionState:
                state.add_metric([*labels, each.value], float(each is current))
            if slot.session is not None:
                memory.add_metric(labels, slot.memory_bytes)
            if slot.batcher is not None:
                capacity.add_metric(labels, slot.record.batching.max_queue_size)
        revision = GaugeMetricFamily(
            "ortserve_registry_revision", "Registry revision whose snapshot this server has applied"
        )
        revision.add_metric([], self._pool.events.revision)
        yield from (state, memory, capacity, revision)

    def _slots(self) -> list[VersionSlot]:
        # The event loop may add or drop a model while the scrape thread copies the pool's
        # dictionaries; like asyncio.all_tasks, try again.
        for _ in range(10):
            try:
                return self._pool.slots()
            except (NotFound, RuntimeError):
                continue
        return []
