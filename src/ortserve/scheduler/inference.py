"""The inference core the servicers call: route, validate, run, account."""

from __future__ import annotations

import time
from asyncio import CancelledError
from collections.abc import Callable, Sequence

from ortserve.errors import DeadlineExceeded, InvalidInput
from ortserve.runtime.signature import Signature, check_feeds
from ortserve.scheduler.calls import PredictCall, PredictResult
from ortserve.scheduler.pool import ModelPool


class InferenceCore:
    """Predict without touching the database: everything comes from the in-memory pool.

    `classify` names the status code of a failure for metrics (the server's error table).
    """

    def __init__(
        self, pool: ModelPool, classify: Callable[[BaseException], str] = lambda exc: "ERROR"
    ) -> None:
        self.pool = pool
        self._classify = classify

    async def predict(self, call: PredictCall) -> PredictResult:
        slot = self.pool.resolve(call.model, call.selector)
        record = slot.record
        rows = check_feeds(record.signature, call.feeds, call.model)
        outputs = _wanted_outputs(record.signature, call.outputs, call.model)
        deadline = _deadline(call.timeout_s)
        assert slot.batcher is not None  # READY slots always have one
        start = time.perf_counter_ns()
        slot.enter()
        observer = slot.observer
        observer.started()
        try:
            arrays, timing = await slot.batcher.submit(call.feeds, outputs, rows, deadline, call.priority)
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
        return PredictResult(call.model, record.version, dict(zip(outputs, arrays, strict=True)), timing)


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


__all__ = ["InferenceCore"]
