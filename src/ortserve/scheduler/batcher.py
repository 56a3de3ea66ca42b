"""The dynamic batcher of one loaded version: queue, priorities, deadlines, batches, execution.

Requests wait in per-priority queues. A loop takes an execution slot, then closes a batch when
it is full, reaches the largest preferred size, has waited `max_queue_delay_us` since its first
request, or when waiting longer would make its earliest deadline miss (deadline-aware: compute
time per batch size is learned online). Batches run on the version's shared session in the
executor's threads; results are split back to their callers by row offsets.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import time
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Executor, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from ortserve.errors import DeadlineExceeded, FailedPrecondition, InvalidInput, ResourceExhausted, Unavailable
from ortserve.runtime.session import OrtSession
from ortserve.scheduler.batch import shape_key, split, stack
from ortserve.scheduler.calls import Timing
from ortserve.scheduler.latency import LatencyModel
from ortserve.scheduler.observer import VersionObserver
from ortserve.scheduler.stats import VersionStats

DEADLINE_MARGIN = 1.2  # the compute estimate is stretched by this much before it is trusted


class Flush(enum.StrEnum):
    IMMEDIATE = "immediate"  # nothing queued and the compute is tiny: run in the caller's task
    FULL = "full"
    PREFERRED = "preferred"
    DELAY = "delay"
    DEADLINE = "deadline"


@dataclass(frozen=True, slots=True, kw_only=True)
class BatcherConfig:
    """`max_batch_size` <= 1 runs every request on its own (batching off)."""

    max_batch_size: int
    max_queue_delay_us: int
    preferred_batch_sizes: tuple[int, ...]
    max_queue_size: int
    max_concurrent_batches: int
    # Batches expected to compute faster than this run on the event loop itself: for tiny
    # models a hop to the executor costs more than the computation. 0 always uses the executor.
    inline_compute_us: int = 0


@dataclass(slots=True, eq=False)
class _Item:
    feeds: Mapping[str, np.ndarray]
    outputs: Sequence[str]
    rows: int
    key: tuple[object, ...]
    deadline_ns: int | None
    enqueued_ns: int
    future: asyncio.Future[tuple[list[np.ndarray], Timing]]
    queued: bool = True
    batch: _Running | None = None
    timer: asyncio.TimerHandle | None = None


@dataclass(slots=True, eq=False)
class _Running:
    items: list[_Item]
    options: ort.RunOptions = field(default_factory=ort.RunOptions)


class Batcher:
    """Owned by the pool; `start()` before the first submit, `aclose()` after the last."""

    def __init__(
        self,
        session: OrtSession,
        executor: Executor | None,
        stats: VersionStats,
        config: BatcherConfig,
        *,
        name: str,
        observer: VersionObserver,
    ) -> None:
        self._session = session
        # By default each version has its own threads, one per batch it may run at once.
        self._own_executor = executor is None
        self._executor: Executor = executor or ThreadPoolExecutor(
            config.max_concurrent_batches, thread_name_prefix=f"ort {name}"
        )
        self._stats = stats
        self._config = config
        self._name = name
        self._observer = observer
        self._max = max(1, config.max_batch_size)
        self._delay_ns = config.max_queue_delay_us * 1000
        self._inline_ns = config.inline_compute_us * 1000
        self._preferred = tuple(sorted(p for p in config.preferred_batch_sizes if p <= self._max))
        self._queues: dict[int, deque[_Item]] = {}
        self._priorities: list[int] = []
        self._queued = 0
        self._wake = asyncio.Event()
        self._slots = asyncio.Semaphore(config.max_concurrent_batches)
        self.latency = LatencyModel()
        self._running: set[asyncio.Task[None]] = set()
        self._loop_task: asyncio.Task[None] | None = None
        self._closed = False

    def start(self) -> None:
        self._loop_task = asyncio.create_task(self._loop(), name=f"batcher {self._name}")

    @property
    def queued(self) -> int:
        return self._queued

    async def submit(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str],
        rows: int,
        deadline: float | None,
        priority: int = 0,
    ) -> tuple[list[np.ndarray], Timing]:
        """Queue one request and wait for its share of a batch's outputs."""
        if not self._queued and self._inline_ns and not self._closed:
            estimate = self.latency.estimate(rows)
            if estimate is not None and estimate <= self._inline_ns:
                return self._run_now(feeds, outputs, rows)
        item = self._admit(feeds, outputs, rows, deadline)
        queue = self._queues.get(priority)
        if queue is None:
            queue = self._queues[priority] = deque()
            self._priorities = sorted(self._queues, reverse=True)
        queue.append(item)
        self._queued += 1
        self._observer.queue_depth(self._queued)
        self._wake.set()
        if deadline is not None:
            # Expire in the queue even while every execution slot is busy.
            item.timer = asyncio.get_running_loop().call_at(deadline, self._expire, item)
        try:
            return await item.future
        except asyncio.CancelledError:
            self._abandon(item)
            raise
        finally:
            if item.timer is not None:
                item.timer.cancel()

    def _run_now(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], rows: int
    ) -> tuple[list[np.ndarray], Timing]:
        """The idle fast path: nothing to batch with, and queueing would cost more than computing."""
        self._observer.flushed(Flush.IMMEDIATE)
        start = time.perf_counter_ns()
        try:
            arrays = self._session.run(feeds, outputs)
        except Exception as exc:
            raise self._batch_error(exc, 1) from exc
        ns = time.perf_counter_ns() - start
        self._account(rows, (0, ns, 0))
        return arrays, Timing(0, ns, rows, self._session.provider)

    def _expire(self, item: _Item) -> None:
        assert item.deadline_ns is not None
        self._alive(item, max(time.monotonic_ns(), item.deadline_ns))

    def _admit(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str], rows: int, deadline: float | None
    ) -> _Item:
        if self._closed:
            raise Unavailable(f"{self._name} is unloading; retry")
        if self._queued >= self._config.max_queue_size:
            raise ResourceExhausted(
                f"{self._name}: queue is full ({self._config.max_queue_size} requests, its max_queue_size)"
            )
        now = time.monotonic_ns()
        deadline_ns = None if deadline is None else int(deadline * 1e9)
        if deadline_ns is not None:
            self._check_feasible(rows, deadline_ns - now)
        key = shape_key(feeds, outputs) if self._max > 1 else ()
        future: asyncio.Future[tuple[list[np.ndarray], Timing]] = asyncio.get_running_loop().create_future()
        return _Item(feeds, outputs, rows, key, deadline_ns, now, future)

    def _check_feasible(self, rows: int, left_ns: int) -> None:
        estimate = self.latency.estimate(rows)
        if estimate is not None and estimate > left_ns:
            raise DeadlineExceeded(
                f"{self._name}: the request cannot finish within its deadline: {left_ns / 1e6:.3f} ms left, "
                f"computing {rows} row(s) takes about {estimate / 1e6:.3f} ms"
            )

    def _abandon(self, item: _Item) -> None:
        """The caller went away: leave the queue, or stop its batch if nobody else waits for it."""
        if item.queued:
            item.queued = False
            self._queued -= 1
        running = item.batch
        if running is not None and all(i.future.done() for i in running.items):
            running.options.terminate = True

    async def _loop(self) -> None:
        while True:
            await self._slots.acquire()
            try:
                items, reason = await self._next_batch()
            except BaseException:
                self._slots.release()
                raise
            self._observer.flushed(reason)
            running = _Running(items)
            for item in items:
                item.batch = running
            if self._runs_inline(items):
                self._execute_inline(running)
                continue
            task = asyncio.create_task(self._execute(running))
            self._running.add(task)
            task.add_done_callback(self._running.discard)

    def _runs_inline(self, items: list[_Item]) -> bool:
        if not self._inline_ns:
            return False
        estimate = self.latency.estimate(sum(item.rows for item in items))
        return estimate is not None and estimate <= self._inline_ns

    def _execute_inline(self, running: _Running) -> None:
        """Compute on the event loop: no thread hop, no task; the loop is busy for microseconds."""
        try:
            items = [i for i in running.items if not i.future.done()]
            if items:
                start = time.monotonic_ns()
                try:
                    outcome = self._compute(items, running.options)
                except Exception as exc:
                    self._fail(items, exc)
                else:
                    self._deliver(items, start, *outcome)
        finally:
            self._slots.release()

    async def _next_batch(self) -> tuple[list[_Item], Flush]:
        while True:
            head = self._head()
            if head is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            if self._max == 1:
                return self._take(head.key, 1), Flush.FULL
            rows, earliest = self._pending(head.key)
            decision = self._decide(head, rows, earliest)
            if isinstance(decision, Flush):
                return self._take(head.key, self._limit(rows, decision)), decision
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(decision):
                    await self._wake.wait()

    def _decide(self, head: _Item, rows: int, earliest: int | None) -> Flush | float:
        """A reason to close the batch now, or how many seconds to wait for more requests."""
        if rows >= self._max:
            return Flush.FULL
        if self._preferred and rows >= self._preferred[-1]:
            return Flush.PREFERRED
        flush_at, reason = head.enqueued_ns + self._delay_ns, Flush.DELAY
        if earliest is not None:
            estimate = self.latency.estimate(rows)
            if estimate is not None and earliest - estimate * DEADLINE_MARGIN < flush_at:
                flush_at, reason = int(earliest - estimate * DEADLINE_MARGIN), Flush.DEADLINE
        wait_ns = flush_at - time.monotonic_ns()
        return reason if wait_ns <= 0 else wait_ns / 1e9

    def _limit(self, rows: int, reason: Flush) -> int:
        if reason is Flush.FULL or not self._preferred:
            return self._max
        fitting = [p for p in self._preferred if p <= rows]
        return fitting[-1] if fitting else self._max

    def _head(self) -> _Item | None:
        """The oldest live request of the highest priority; drops dead ones from the fronts."""
        now = time.monotonic_ns()
        for priority in self._priorities:
            queue = self._queues[priority]
            while queue:
                item = queue[0]
                if self._alive(item, now):
                    return item
                queue.popleft()
        return None

    def _alive(self, item: _Item, now: int) -> bool:
        if not item.queued:
            return False
        if item.deadline_ns is not None and now >= item.deadline_ns:
            item.queued = False
            self._queued -= 1
            waited = (now - item.enqueued_ns) / 1e6
            item.future.set_exception(
                DeadlineExceeded(
                    f"{self._name}: the request's deadline passed after {waited:.3f} ms in the queue"
                )
            )
            return False
        return True

    def _pending(self, key: tuple[object, ...]) -> tuple[int, int | None]:
        """Rows waiting with this shape key (up to a full batch) and their earliest deadline."""
        rows, earliest = 0, None
        for priority in self._priorities:
            for item in self._queues[priority]:
                if item.queued and item.key == key:
                    rows += item.rows
                    if item.deadline_ns is not None and (earliest is None or item.deadline_ns < earliest):
                        earliest = item.deadline_ns
                    if rows >= self._max:
                        return rows, earliest
        return rows, earliest

    def _take(self, key: tuple[object, ...], limit: int) -> list[_Item]:
        """Remove and return requests of `key` in priority order, up to `limit` rows (at least one)."""
        taken: list[_Item] = []
        rows = 0
        now = time.monotonic_ns()
        for priority in self._priorities:
            keep: deque[_Item] = deque()
            for item in self._queues[priority]:
                if not self._alive(item, now):
                    continue
                if item.key == key and (not taken or rows + item.rows <= limit):
                    item.queued = False
                    taken.append(item)
                    rows += item.rows
                else:
                    keep.append(item)
            self._queues[priority] = keep
        self._queued -= len(taken)
        self._observer.queue_depth(self._queued)
        return taken

    async def _execute(self, running: _Running) -> None:
        try:
            items = [i for i in running.items if not i.future.done()]
            if items:
                await self._run_batch(items, running.options)
        finally:
            self._slots.release()

    async def _run_batch(self, items: list[_Item], options: ort.RunOptions) -> None:
        loop = asyncio.get_running_loop()
        start = time.monotonic_ns()
        try:
            parts, rows, ns = await loop.run_in_executor(self._executor, self._compute, items, options)
        except Exception as exc:
            self._fail(items, exc)
            return
        self._deliver(items, start, parts, rows, ns)

    def _fail(self, items: list[_Item], exc: Exception) -> None:
        error = self._batch_error(exc, len(items))
        for item in items:
            if not item.future.done():
                item.future.set_exception(error)

    def _deliver(
        self,
        items: list[_Item],
        start: int,
        parts: list[list[np.ndarray]],
        rows: int,
        ns: tuple[int, int, int],
    ) -> None:
        self._account(rows, ns)
        compute = sum(ns)
        provider = self._session.provider
        for item, arrays in zip(items, parts, strict=True):
            if not item.future.done():
                item.future.set_result((arrays, Timing(start - item.enqueued_ns, compute, rows, provider)))

    def _compute(
        self, items: list[_Item], options: ort.RunOptions
    ) -> tuple[list[list[np.ndarray]], int, tuple[int, int, int]]:
        """In an executor thread: stack, run, split; with the time of each step."""
        t0 = time.perf_counter_ns()
        feeds, offsets = stack([item.feeds for item in items])
        t1 = time.perf_counter_ns()
        outputs = items[0].outputs
        arrays = self._session.run(feeds, outputs, options)
        t2 = time.perf_counter_ns()
        parts = split(arrays, offsets, outputs) if len(items) > 1 else [arrays]
        t3 = time.perf_counter_ns()
        return parts, offsets[-1], (t1 - t0, t2 - t1, t3 - t2)

    def _account(self, rows: int, ns: tuple[int, int, int]) -> None:
        self.latency.observe(rows, sum(ns))
        self._stats.record_batch(rows, *ns)
        self._observer.batch(rows, sum(ns))

    def _batch_error(self, exc: Exception, requests: int) -> Exception:
        if isinstance(exc, ValueError):
            return FailedPrecondition(f"{self._name} cannot be batched: {exc}; set its max_batch_size to 0")
        scope = "this input" if requests == 1 else f"a batch of {requests} requests"
        return InvalidInput(f"{self._name} failed on {scope}: {exc}")

    async def aclose(self) -> None:
        """Stop taking requests; fail those still queued; let running batches finish."""
        self._closed = True
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        for queue in self._queues.values():
            for item in queue:
                if item.queued and not item.future.done():
                    item.future.set_exception(
                        Unavailable(f"{self._name} was unloaded before the request ran")
                    )
            queue.clear()
        self._queued = 0
        if self._running:
            await asyncio.gather(*self._running, return_exceptions=True)
        if self._own_executor:
            self._executor.shutdown(wait=False)
