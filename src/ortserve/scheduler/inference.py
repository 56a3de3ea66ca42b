"""The inference core the servicers call: route, validate, run, account, shadow."""

from __future__ import annotations

import asyncio
import random
import time
from asyncio import CancelledError
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import structlog

from ortserve.errors import DeadlineExceeded, InvalidInput, OrtserveError
from ortserve.records import VersionState
from ortserve.scheduler.calls import PredictCall, PredictResult
from ortserve.scheduler.pool import ModelPool, VersionSlot
from ortserve.scheduler.shadow import NullShadowObserver, ShadowObserver, ShadowStats
from ortserve.scheduler.shm import SharedMemoryRegistry
from ortserve.signature import Signature, check_feeds

log = structlog.get_logger(__name__)


class InferenceCore:
    """Predict without touching the database: everything comes from the in-memory pool.

    `classify` names the status code of a failure for metrics (the server's error table).
    `max_request_bytes` bounds the input tensors of one request (0: no limit), checked before queueing.
    """

    def __init__(
        self,
        pool: ModelPool,
        classify: Callable[[BaseException], str] = lambda exc: "ERROR",
        shadow_observer: ShadowObserver | None = None,
        max_request_bytes: int = 0,
        shared_memory_key_prefix: str = "",
    ) -> None:
        self.pool = pool
        self.max_request_bytes = max_request_bytes
        self._classify = classify
        self._shadow_observer = shadow_observer or NullShadowObserver()
        self.shadows: dict[str, ShadowStats] = {}
        self._shadow_tasks: set[asyncio.Task[None]] = set()
        # System shared memory regions of the callers (OIP extension); closed in aclose.
        self.shared_memory = SharedMemoryRegistry(
            key_prefix=shared_memory_key_prefix, max_read_bytes=max_request_bytes
        )

    async def predict(self, call: PredictCall) -> PredictResult:
        deadline = _deadline(call.timeout_s)
        slot = self.pool.route(call.model, call.selector, call.routing_key)
        if slot.state is not VersionState.READY:
            slot = await self.pool.ready(slot, deadline)
        result = await self._run(
            slot, call.model, call.feeds, call.outputs, deadline=deadline, priority=call.priority
        )
        if not call.selector:
            self._maybe_shadow(call, result)
        return result

    async def _run(
        self,
        slot: VersionSlot,
        model: str,
        feeds: Mapping[str, np.ndarray],
        wanted: Sequence[str],
        *,
        deadline: float | None,
        priority: int,
    ) -> PredictResult:
        record = slot.record
        rows = check_feeds(record.signature, feeds, model, self.max_request_bytes)
        outputs = _wanted_outputs(record.signature, wanted, model)
        assert slot.batcher is not None  # READY slots always have one
        start = time.perf_counter_ns()
        slot.enter()
        observer = slot.observer
        observer.started()
        try:
            arrays, timing = await slot.batcher.submit(feeds, outputs, rows, deadline, priority)
        except BaseException as exc:
            elapsed = time.perf_counter_ns() - start
            slot.stats.record_request(False, elapsed, 0)
            observer.finished(
                elapsed / 1e9, 0, "CANCELLED" if isinstance(exc, CancelledError) else self._classify(exc)
            )
            raise
        finally:
            slot.leave()
        elapsed = time.perf_counter_ns() - start
        slot.stats.record_request(True, elapsed, timing.queue_ns)
        observer.finished(elapsed / 1e9, timing.queue_ns, "OK")
        return PredictResult(model, record.version, dict(zip(outputs, arrays, strict=True)), timing)

    def _maybe_shadow(self, call: PredictCall, served: PredictResult) -> None:
        policy = self.pool.routes(call.model).policy
        if policy is None or not policy.shadow_target or random.random() >= policy.shadow_share:
            return
        task = asyncio.create_task(self._shadow(call, served, policy.shadow_target))
        self._shadow_tasks.add(task)
        task.add_done_callback(self._shadow_tasks.discard)

    async def _shadow(self, call: PredictCall, served: PredictResult, target: str) -> None:
        """Run the same request on the shadow version and compare; failures are only counted."""
        model = call.model
        try:
            slot = self.pool.route(model, target)
            if slot.record.version == served.version:
                return
            stats = self._stats_for(model, slot.record.version)
            if slot.state is not VersionState.READY:
                raise OrtserveError(f"shadow version {slot.record.version} is {slot.state.value}")
            shadow = await self._run(
                slot, model, call.feeds, tuple(served.outputs), deadline=None, priority=-1
            )
        except OrtserveError as exc:
            self._shadow_failed(model, target, exc)
            return
        stats.add(served.outputs, shadow.outputs)
        self._shadow_observer.compared(
            model, stats.shadow_version, stats.max_abs_diff, stats.argmax_agreement
        )

    def _stats_for(self, model: str, version: int) -> ShadowStats:
        stats = self.shadows.get(model)
        if stats is None or stats.shadow_version != version:
            stats = self.shadows[model] = ShadowStats(version)
        return stats

    def _shadow_failed(self, model: str, target: str, exc: Exception) -> None:
        stats = self.shadows.get(model)
        if stats is not None:
            stats.errors += 1
            self._shadow_observer.failed(model, stats.shadow_version)
        log.debug("shadow_failed", model=model, target=target, error=str(exc))

    async def aclose(self) -> None:
        for task in list(self._shadow_tasks):
            task.cancel()
        await asyncio.gather(*self._shadow_tasks, return_exceptions=True)
        self.shared_memory.close()


def _wanted_outputs(signature: Signature, wanted: Sequence[str], model: str) -> list[str]:
    names = signature.output_names()
    chosen = list(wanted) if wanted else list(names)
    unknown = [n for n in chosen if n not in names]
    if unknown:
        raise InvalidInput(f"model {model!r} has no output {unknown[0]!r}; outputs: {', '.join(names)}")
    return chosen


def _deadline(timeout_s: float | None) -> float | None:
    if timeout_s is None:
        return None
    if timeout_s <= 0:
        raise DeadlineExceeded("the request's deadline passed before it was queued")
    return time.monotonic() + timeout_s
