"""The dynamic batcher of one loaded version: admission, dispatch and execution of batches.

Requests wait in a BatchQueue (priorities, deadlines, when to close a batch: full, preferred size,
`max_queue_delay_us` since the first request, or an earliest deadline that waiting would miss).
Batches run on the version's shared session in its execution threads, at most
`max_concurrent_batches` at once. The event loop starts a batch when a slot is free; a thread that
finishes a batch takes the next closable one itself, under the queue's lock, so a busy version
never waits for the event loop between batches. Results reach their callers through one loop
callback per batch; futures are only ever touched on the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import onnxruntime as ort
import structlog

from ortserve.bounded_log import BoundedLog
from ortserve.errors import (
    DeadlineExceeded,
    FailedPrecondition,
    InvalidInput,
    ResourceExhausted,
    Unavailable,
    logged,
)
from ortserve.runtime.session import OrtSession, is_ort_error
from ortserve.scheduler.batch import RowMismatch, shape_key, split, stack
from ortserve.scheduler.batch_queue import Batch, BatchQueue, Flush, Request
from ortserve.scheduler.calls import BatchSpan, Timing
from ortserve.scheduler.in_flight import InFlight
from ortserve.scheduler.latency import LatencyModel
from ortserve.scheduler.observer import VersionObserver
from ortserve.scheduler.stats import VersionStats

if TYPE_CHECKING:
    from ortserve.scheduler.tracing import BatchTracer


@dataclass(frozen=True, slots=True)
class Outcome:
    """A computed batch: each request's outputs, and what the computation cost."""

    parts: list[list[np.ndarray]]
    rows: int
    ns: tuple[int, int, int]  # wall time of stack, run, split
    cpu_ns: int  # the computing thread's own CPU time


IDLE_INLINE_FACTOR = 20


@dataclass(frozen=True, slots=True, kw_only=True)
class BatcherConfig:
    """`max_batch_size` <= 1 runs every request on its own (batching off)."""

    max_batch_size: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    max_concurrent_batches: int
    # Batches expected to compute faster than this run on the event loop itself: for tiny
    # models a hop to a thread costs more than the computation. 0 always uses the threads.
    inline_compute_us: int = 0
    # The same for a request that finds the version idle (nothing queued, no batch running) while
    # the server holds no other inference call: the loop has nothing else to do then, and the hop
    # (a thread wake-up, two GIL hand-overs and a loop wake-up: about 0.2 ms of CPU per request
    # here) would cost more than the computation. None: IDLE_INLINE_FACTOR x inline_compute_us.
    idle_inline_compute_us: int | None = None


def idle_inline(estimate_ns: float | None, limits_ns: tuple[int, int], other_calls: int) -> bool:
    """Whether a request that finds its version idle computes on the event loop at once.

    `estimate_ns` is what its computation costs the loop (None: not known yet); `limits_ns` are
    `inline_compute_us` and `idle_inline_compute_us` in nanoseconds; `other_calls` the inference
    calls the server holds beside it, including those whose message it has not read yet. Under
    the first limit it always does (queued, it would be computed on the loop all the same). Under
    the second, only when no other call waits: computing on the loop keeps it from reading the
    others, and each would then find the version idle in turn and run alone, one after another
    (at 16 in flight on `mlp`, batches of one at 0.66x the throughput). Such a request queues
    instead: a thread computes while the loop reads the others, and they batch.
    """
    if estimate_ns is None:
        return False
    inline_ns, idle_ns = limits_ns
    return estimate_ns <= inline_ns or (other_calls == 0 and estimate_ns <= idle_ns)


class Batcher:
    """Created on the event loop that will submit to it; `aclose()` after the last submit."""

    def __init__(
        self,
        session: OrtSession,
        executor: Executor | None,
        stats: VersionStats,
        config: BatcherConfig,
        *,
        name: str,
        observer: VersionObserver,
        tracer: BatchTracer | None = None,
        in_flight: InFlight | None = None,
    ) -> None:
        self._session = session
        self._in_flight = in_flight  # the server's inference calls (None: only this batcher's own)
        self._tracer = tracer  # None unless tracing is configured: one test per request
        self._failure_log = BoundedLog(
            structlog.get_logger("ortserve.errors").warning
        )  # ONNX Runtime's texts of failed batches
        slots = max(1, config.max_concurrent_batches)
        # By default each version has its own threads, one per batch it may run at once.
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(slots, thread_name_prefix=f"ort {name}")
        self._stats = stats
        self._config = config
        self._name = name
        self._observer = observer
        self._batching = config.max_batch_size > 1
        self._inline_ns = config.inline_compute_us * 1000
        idle_us = config.idle_inline_compute_us
        if idle_us is None:
            idle_us = config.inline_compute_us * IDLE_INLINE_FACTOR
        idle_inline_ns = idle_us * 1000
        self._inline_limits = (self._inline_ns, idle_inline_ns)  # for idle_inline, built once
        self.latency = LatencyModel()  # wall time per batch size, wherever the batch ran
        # What a batch would cost the event loop: the computing thread's own CPU time. A
        # thread's wall time also counts its waits for the GIL while the loop is busy; judging
        # the inline path by that would shut the path for good under load.
        self._loop_cost = LatencyModel()
        self._queue = BatchQueue(
            max_rows=config.max_batch_size,
            delay_ns=config.max_queue_delay_us * 1000,
            preferred=config.preferred_batch_sizes,
            latency=self.latency,
        )
        self._lock = threading.Lock()  # guards _queue, _free and _closed
        self._free = slots  # execution slots not in use
        self._closed = False
        self._loop = asyncio.get_running_loop()
        self._dispatch_soon = False
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = 0
        self._workers = 0  # executor jobs not yet finished (loop side)
        self._idle = asyncio.Event()
        self._idle.set()

    @property
    def queued(self) -> int:
        return self._queue.depth

    async def wait_idle(self) -> None:
        """Until no execution thread is running (or handing back) a batch."""
        await self._idle.wait()

    async def submit(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        rows: int,
        deadline: float | None,
        priority: int = 0,
    ) -> tuple[list[np.ndarray], Timing]:
        """Queue one request and wait for its share of a batch's outputs."""
        if self._inline_ns and not self._queue.depth and not self._workers and not self._closed:
            others = self._in_flight.others() if self._in_flight is not None else 0
            if idle_inline(self._loop_cost.estimate(rows), self._inline_limits, others):
                return self._run_now(feeds, outputs, rows)
        request = self._admit(feeds, outputs, rows, deadline)
        with self._lock:
            self._queue.push(request, priority)
            depth = self._queue.depth
        self._observer.queue_depth(depth)
        if deadline is not None:
            # Expire in the queue even while every execution slot is busy.
            request.timer = self._loop.call_at(deadline, self._expire, request)
        if not self._dispatch_soon:
            # After this loop turn, so that requests arriving together batch together.
            self._dispatch_soon = True
            self._loop.call_soon(self._dispatch)
        try:
            result: tuple[list[np.ndarray], Timing] = await request.future
            return result
        except asyncio.CancelledError:
            self._abandon(request)
            raise
        finally:
            if request.timer is not None:
                request.timer.cancel()

    def _run_now(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], rows: int
    ) -> tuple[list[np.ndarray], Timing]:
        """The idle fast path: nothing to batch with, and queueing would cost more than computing."""
        self._observer.flushed(Flush.IMMEDIATE)
        try:
            outcome = self._compute([feeds], outputs, None)
        except Exception as exc:
            raise self._batch_error(exc, 1) from exc
        self._account(outcome.rows, outcome.ns, outcome.cpu_ns)
        if self._tracer is not None:
            taken = time.monotonic_ns() - sum(outcome.ns)
            self._tracer.immediate(BatchSpan(taken, outcome.ns, outcome.rows, Flush.IMMEDIATE))
        return outcome.parts[0], Timing(0, sum(outcome.ns), rows, self._session.provider)

    def _admit(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], rows: int, deadline: float | None
    ) -> Request:
        if self._closed:
            raise Unavailable(f"{self._name} is unloading; retry")
        if self._queue.depth >= self._config.max_queue_size:
            raise ResourceExhausted(
                f"{self._name}: queue is full ({self._config.max_queue_size} requests, its max_queue_size)"
            )
        now = time.monotonic_ns()
        deadline_ns = None if deadline is None else int(deadline * 1e9)
        if deadline_ns is not None:
            self._check_feasible(rows, deadline_ns - now)
        key = shape_key(feeds, outputs) if self._batching else ()
        trace = self._tracer.current() if self._tracer is not None else None
        return Request(feeds, outputs, rows, key, deadline_ns, now, self._loop.create_future(), trace=trace)

    def _check_feasible(self, rows: int, left_ns: int) -> None:
        estimate = self.latency.estimate(rows)
        if estimate is not None and estimate > left_ns:
            raise DeadlineExceeded(
                f"{self._name}: the request cannot finish within its deadline: {left_ns / 1e6:.3f} ms left, "
                f"computing {rows} row(s) takes about {estimate / 1e6:.3f} ms"
            )

    def _expire(self, request: Request) -> None:
        with self._lock:
            removed = self._queue.remove(request)
        if removed:
            self._fail_expired([request])

    def _fail_expired(self, requests: list[Request]) -> None:
        now = time.monotonic_ns()
        for request in requests:
            if request.future.done():
                continue
            waited = (max(now, request.deadline_ns or now) - request.enqueued_ns) / 1e6
            request.future.set_exception(
                DeadlineExceeded(
                    f"{self._name}: the request's deadline passed after {waited:.3f} ms in the queue"
                )
            )
        self._observer.queue_depth(self._queue.depth)

    def _abandon(self, request: Request) -> None:
        """The caller went away: leave the queue, or stop its batch if nobody else waits for it."""
        with self._lock:
            self._queue.remove(request)
            batch = request.batch
        if batch is not None and all(r.future.done() for r in batch.requests):
            batch.options.terminate = True

    # ------------------------------------------------------------------ dispatch (event loop)

    def _dispatch(self) -> None:
        """Start every batch that may start now; arm the timer for the next one that will close."""
        self._dispatch_soon = False
        expired: list[Request] = []
        while True:
            with self._lock:
                step = (
                    None
                    if self._closed or not self._free
                    else self._queue.next_batch(time.monotonic_ns(), expired)
                )
                if isinstance(step, Batch):
                    self._free -= 1
                depth = self._queue.depth
            if not isinstance(step, Batch):
                break
            self._observer.flushed(step.reason)
            self._observer.queue_depth(depth)
            if self._fits_inline(step.rows):
                self._execute_inline(step)
            else:
                self._workers += 1
                self._idle.clear()
                self._executor.submit(self._work, step)
        if expired:
            self._fail_expired(expired)
        if isinstance(step, int):
            self._arm(step)

    def _arm(self, wait_ns: int) -> None:
        at = time.monotonic_ns() + wait_ns
        if self._timer is not None:
            if self._timer_at <= at:
                return
            self._timer.cancel()
        self._timer_at = at
        self._timer = self._loop.call_at(at / 1e9, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._dispatch()

    def _fits_inline(self, rows: int) -> bool:
        """Whether computing `rows` on the event loop should take under `inline_compute_us`
        (0 turns every inline path off)."""
        if not self._inline_ns:
            return False
        estimate = self._loop_cost.estimate(rows)
        return estimate is not None and estimate <= self._inline_ns

    def _execute_inline(self, batch: Batch) -> None:
        """Compute on the event loop: no thread hop; the loop is busy for microseconds."""
        try:
            requests = [r for r in batch.requests if not r.future.done()]
            if requests:
                try:
                    outcome = self._compute([r.feeds for r in requests], requests[0].outputs, batch.options)
                except Exception as exc:
                    self._fail(requests, exc, batch)
                else:
                    self._deliver(requests, batch, outcome)
        finally:
            with self._lock:
                self._free += 1

    def _worker_exit(self) -> None:
        self._workers -= 1
        if not self._workers:
            self._idle.set()
        self._dispatch()

    # ------------------------------------------------------------------ execution (threads)

    def _work(self, batch: Batch) -> None:
        """An execution thread: run the batch, then each next closable one, then give the slot back."""
        running: Batch | None = batch
        try:
            while running is not None:
                self._run_batch(running)
                running = self._take_next()  # None once it has given the slot back
        except BaseException:
            with self._lock:  # never strand the slot, or the version stops computing
                self._free += 1
            raise
        finally:
            self._post(self._worker_exit)

    def _run_batch(self, batch: Batch) -> None:
        requests = [r for r in batch.requests if not r.future.done()]
        if not requests:
            return
        try:
            outcome = self._compute([r.feeds for r in requests], requests[0].outputs, batch.options)
        except Exception as exc:
            self._post(self._fail, requests, exc, batch)
            return
        self._post(self._deliver, requests, batch, outcome)

    def _take_next(self) -> Batch | None:
        expired: list[Request] = []
        with self._lock:
            step = None if self._closed else self._queue.next_batch(time.monotonic_ns(), expired)
            if not isinstance(step, Batch):
                self._free += 1
            depth = self._queue.depth
        if expired:
            self._post(self._fail_expired, expired)
        if not isinstance(step, Batch):
            return None
        self._observer.flushed(step.reason)
        self._observer.queue_depth(depth)
        return step

    def _post(self, callback: Callable[..., None], *args: Any) -> None:
        with contextlib.suppress(RuntimeError):  # the loop is closed: nobody is left to answer
            self._loop.call_soon_threadsafe(callback, *args)

    def _compute(
        self,
        requests: Sequence[Mapping[str, np.ndarray]],
        outputs: Sequence[str],
        options: ort.RunOptions | None,
    ) -> Outcome:
        """Stack the requests' feeds, run, split; with the time of each step."""
        cpu = time.thread_time_ns()
        t0 = time.perf_counter_ns()
        feeds, offsets = stack(requests)
        t1 = time.perf_counter_ns()
        arrays = self._session.run(feeds, outputs, options)
        t2 = time.perf_counter_ns()
        parts = split(arrays, offsets, outputs) if len(requests) > 1 else [arrays]
        t3 = time.perf_counter_ns()
        return Outcome(parts, offsets[-1], (t1 - t0, t2 - t1, t3 - t2), time.thread_time_ns() - cpu)

    # ------------------------------------------------------------------ results (event loop)

    def _fail(self, requests: list[Request], exc: Exception, batch: Batch) -> None:
        waiting = [r for r in requests if not r.future.done()]
        if not waiting:  # everyone left (a batch stopped on purpose): nobody to tell, nothing to log
            return
        error = self._batch_error(exc, len(waiting))
        for request in waiting:
            request.future.set_exception(error)
        if self._tracer is not None:
            elapsed = (0, time.monotonic_ns() - batch.taken_ns, 0)
            rows = sum(r.rows for r in waiting)
            self._trace(waiting, BatchSpan(batch.taken_ns, elapsed, rows, batch.reason, error))

    def _deliver(self, requests: list[Request], batch: Batch, outcome: Outcome) -> None:
        self._account(outcome.rows, outcome.ns, outcome.cpu_ns)
        compute = sum(outcome.ns)
        provider = self._session.provider
        start = batch.taken_ns
        for request, arrays in zip(requests, outcome.parts, strict=True):
            if not request.future.done():
                timing = Timing(start - request.enqueued_ns, compute, outcome.rows, provider)
                request.future.set_result((arrays, timing))
        if self._tracer is not None:
            self._trace(requests, BatchSpan(batch.taken_ns, outcome.ns, outcome.rows, batch.reason))

    def _trace(self, requests: list[Request], span: BatchSpan) -> None:
        assert self._tracer is not None
        self._tracer.batch([(r.trace, r.enqueued_ns) for r in requests], span)

    def _account(self, rows: int, ns: tuple[int, int, int], cpu_ns: int) -> None:
        self.latency.observe(rows, sum(ns))
        self._loop_cost.observe(rows, cpu_ns)
        self._stats.record_batch(rows, *ns)
        self._observer.batch(rows, sum(ns))

    def _batch_error(self, exc: Exception, requests: int) -> Exception:
        """What the callers of a failed batch see. ONNX Runtime's own text (node names, internals)
        goes to the log; an exception of any other kind is a bug and reaches them as INTERNAL."""
        if isinstance(exc, RowMismatch):
            return FailedPrecondition(f"{self._name} cannot be batched: {exc}; set its max_batch_size to 0")
        if not is_ort_error(exc):
            return exc
        scope = "this input" if requests == 1 else f"a batch of {requests} requests"
        kind = type(exc).__name__
        message = f"{self._name} failed on {scope} in ONNX Runtime ({kind})"

        def emit(event: str, **fields: Any) -> None:  # callers can fail batches at any rate
            self._failure_log(event, self._name, kind, **fields)

        return InvalidInput(logged(message, exc, emit=emit))

    async def aclose(self) -> None:
        """Stop taking requests; fail those still queued; let running batches finish."""
        with self._lock:
            self._closed = True
            left = self._queue.drain()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        for request in left:
            if not request.future.done():
                request.future.set_exception(Unavailable(f"{self._name} was unloaded before the request ran"))
        self._observer.queue_depth(0)
        await self.wait_idle()
        if self._own_executor:
            self._executor.shutdown(wait=False)
