"""A small in-process event bus: registry changes and load events, for WatchModels."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from ortserve.records import VersionState

QUEUE_SIZE = 1000


@dataclass(frozen=True, slots=True)
class ModelEvent:
    kind: str
    model: str
    version: int = 0
    state: VersionState | None = None
    detail: str = ""
    revision: int = 0
    time_ns: int = 0


class EventBus:
    """Every subscriber gets every event; a subscriber that falls QUEUE_SIZE behind loses the oldest."""

    def __init__(self) -> None:
        self._queues: set[asyncio.Queue[ModelEvent]] = set()
        self.revision = 0

    def publish(
        self, kind: str, model: str, version: int = 0, state: VersionState | None = None, detail: str = ""
    ) -> None:
        event = ModelEvent(kind, model, version, state, detail, self.revision, time.time_ns())
        for queue in self._queues:
            if queue.full():
                queue.get_nowait()
            queue.put_nowait(event)

    @property
    def subscribers(self) -> int:
        return len(self._queues)

    async def subscribe(self) -> AsyncIterator[ModelEvent]:
        queue: asyncio.Queue[ModelEvent] = asyncio.Queue(QUEUE_SIZE)
        self._queues.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._queues.discard(queue)
