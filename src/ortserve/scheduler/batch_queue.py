"""The request queue of one version's batcher: priorities, deadlines and when to close a batch.

Pure bookkeeping over plain objects: no futures, no threads, no clock of its own (callers pass
`now` in monotonic nanoseconds). The batcher calls it with its lock held, from the event loop and
from its execution threads; requests whose deadline has passed are handed back, never failed here.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnxruntime as ort

from ortserve.scheduler.latency import LatencyModel

DEADLINE_MARGIN = 1.2  # the compute estimate is stretched by this much before it is trusted


class Flush(enum.StrEnum):
    IMMEDIATE = "immediate"  # nothing queued and the compute is tiny: run in the caller's task
    FULL = "full"
    PREFERRED = "preferred"
    DELAY = "delay"
    DEADLINE = "deadline"


@dataclass(slots=True, eq=False)
class Request:
    """One queued call; `future` belongs to the event loop and is only touched there."""

    feeds: Mapping[str, np.ndarray]
    outputs: Sequence[str]
    rows: int
    key: tuple[object, ...]
    deadline_ns: int | None
    enqueued_ns: int
    future: Any  # asyncio.Future[tuple[list[np.ndarray], Timing]]
    queued: bool = True
    batch: Batch | None = None
    timer: Any = None  # asyncio.TimerHandle of the deadline, if any
    trace: Any = None  # the caller's span context, when tracing is on


@dataclass(slots=True, eq=False)
class Batch:
    requests: list[Request]
    reason: Flush
    taken_ns: int
    options: ort.RunOptions = field(default_factory=ort.RunOptions)

    @property
    def rows(self) -> int:
        return sum(r.rows for r in self.requests)


class BatchQueue:
    """Per-priority FIFO queues; higher priority first, oldest first within a priority."""

    def __init__(
        self, *, max_rows: int, delay_ns: int, preferred: Sequence[int], latency: LatencyModel
    ) -> None:
        self._max = max(1, max_rows)
        self._delay_ns = delay_ns
        self._preferred = tuple(sorted(p for p in preferred if p <= self._max))
        self._latency = latency
        self._queues: dict[int, deque[Request]] = {}
        self._priorities: list[int] = []
        self.depth = 0  # live queued requests

    def push(self, request: Request, priority: int) -> None:
        queue = self._queues.get(priority)
        if queue is None:
            queue = self._queues[priority] = deque()
            self._priorities = sorted(self._queues, reverse=True)
        queue.append(request)
        self.depth += 1

    def remove(self, request: Request) -> bool:
        """Take a request out (cancelled or expired); False when it had already left the queue."""
        if not request.queued:
            return False
        request.queued = False
        self.depth -= 1
        return True

    def drain(self) -> list[Request]:
        """Empty the queue; return the requests still waiting."""
        left = [r for q in self._queues.values() for r in q if r.queued]
        for request in left:
            request.queued = False
        self._queues.clear()
        self._priorities = []
        self.depth = 0
        return left

    def next_batch(self, now: int, expired: list[Request]) -> Batch | int | None:
        """A batch to run now, nanoseconds until one should close, or None when nothing waits.

        Requests found past their deadline leave the queue and are appended to `expired`.
        """
        self._prune()
        head = self._head(now, expired)
        if head is None:
            return None
        if self._max == 1:
            return self._take(head.key, 1, Flush.FULL, now, expired)
        rows, earliest = self._pending(head.key)
        decision = self._decide(head, rows, earliest, now)
        if isinstance(decision, Flush):
            return self._take(head.key, self._limit(rows, decision), decision, now, expired)
        return decision

    def _decide(self, head: Request, rows: int, earliest: int | None, now: int) -> Flush | int:
        if rows >= self._max:
            return Flush.FULL
        if self._preferred and rows >= self._preferred[-1]:
            return Flush.PREFERRED
        flush_at, reason = head.enqueued_ns + self._delay_ns, Flush.DELAY
        if earliest is not None:
            estimate = self._latency.estimate(rows)
            if estimate is not None and earliest - estimate * DEADLINE_MARGIN < flush_at:
                flush_at, reason = int(earliest - estimate * DEADLINE_MARGIN), Flush.DEADLINE
        wait_ns = flush_at - now
        return reason if wait_ns <= 0 else wait_ns

    def _limit(self, rows: int, reason: Flush) -> int:
        if reason is Flush.FULL or not self._preferred:
            return self._max
        fitting = [p for p in self._preferred if p <= rows]
        return fitting[-1] if fitting else self._max

    def _head(self, now: int, expired: list[Request]) -> Request | None:
        """The oldest live request of the highest priority; drops dead ones from the fronts."""
        for priority in self._priorities:
            queue = self._queues[priority]
            while queue:
                request = queue[0]
                if self._alive(request, now, expired):
                    return request
                queue.popleft()
        return None

    def _prune(self) -> None:
        """Drop requests that left (taken, cancelled) from the fronts, and the priorities whose
        queue that empties: callers choose any number of distinct priorities, and every batch
        looks at each priority still listed."""
        emptied = False
        for priority in self._priorities:
            queue = self._queues[priority]
            while queue and not queue[0].queued:
                queue.popleft()
            if not queue:
                del self._queues[priority]
                emptied = True
        if emptied:
            self._priorities = sorted(self._queues, reverse=True)

    def _alive(self, request: Request, now: int, expired: list[Request]) -> bool:
        if not request.queued:
            return False
        if request.deadline_ns is not None and now >= request.deadline_ns:
            self.remove(request)
            expired.append(request)
            return False
        return True

    def _pending(self, key: tuple[object, ...]) -> tuple[int, int | None]:
        """Rows waiting with this shape key (up to a full batch) and their earliest deadline."""
        rows, earliest = 0, None
        for priority in self._priorities:
            for request in self._queues[priority]:
                if request.queued and request.key == key:
                    rows += request.rows
                    deadline = request.deadline_ns
                    if deadline is not None and (earliest is None or deadline < earliest):
                        earliest = deadline
                    if rows >= self._max:
                        return rows, earliest
        return rows, earliest

    def _take(
        self, key: tuple[object, ...], limit: int, reason: Flush, now: int, expired: list[Request]
    ) -> Batch:
        """Take requests of `key` in priority order, up to `limit` rows (at least one).

        Taken requests are only marked: the scan stops once the batch is full, and `_head`
        drops marked requests when they reach the front, so no queue is rebuilt per batch.
        """
        taken: list[Request] = []
        rows = 0
        for priority in self._priorities:
            for request in self._queues[priority]:
                if rows >= limit:
                    break
                if not self._alive(request, now, expired):
                    continue
                if request.key == key and (not taken or rows + request.rows <= limit):
                    request.queued = False
                    taken.append(request)
                    rows += request.rows
        self.depth -= len(taken)
        batch = Batch(taken, reason, now)
        for request in taken:
            request.batch = batch
        return batch
