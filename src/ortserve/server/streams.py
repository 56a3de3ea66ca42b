"""Bidirectional streams: start each message as it arrives, answer in request order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Coroutine, Generator
from typing import Any, TypeVar

Req = TypeVar("Req")
Resp = TypeVar("Resp")

MAX_PENDING = 1024  # answers not yet sent, per stream; reading pauses beyond it


async def ordered_answers(
    requests: AsyncIterator[Req], answer: Callable[[Req], Coroutine[Any, Any, Resp]]
) -> AsyncIterator[Resp]:
    """Run `answer` for every request concurrently and yield the results in request order.

    `answer` must turn per-message failures into responses itself; anything it raises ends
    the stream.
    """
    pending: asyncio.Queue[asyncio.Future[Resp] | None] = asyncio.Queue(MAX_PENDING)

    async def read() -> None:
        try:
            async for request in requests:
                await pending.put(start_eagerly(answer(request)))
        finally:
            await pending.put(None)

    reader = asyncio.create_task(read())
    try:
        while (task := await pending.get()) is not None:
            yield await task
        await reader  # surfaces a failure of the request stream itself
    finally:
        reader.cancel()
        while not pending.empty():
            leftover = pending.get_nowait()
            if leftover is not None:
                leftover.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await reader


def start_eagerly(coro: Coroutine[Any, Any, Resp]) -> asyncio.Future[Resp]:
    """Run `coro` until it first suspends; one that finishes at once never becomes a task.

    Answers for tiny models are computed without suspending, so a stream message costs no task
    creation and no extra trip through the event loop. A coroutine that does suspend continues in
    a task exactly where it stopped.
    """
    loop = asyncio.get_running_loop()
    try:
        blocker = coro.send(None)
    except StopIteration as done:
        future: asyncio.Future[Resp] = loop.create_future()
        future.set_result(done.value)
        return future
    return asyncio.ensure_future(_Continue(coro, blocker).run())


class _Continue:
    """Drives a coroutine that already ran up to `blocker` (the future it awaits) to the end."""

    def __init__(self, coro: Coroutine[Any, Any, Any], blocker: Any) -> None:
        self._coro = coro
        self._blocker = blocker

    async def run(self) -> Any:
        return await self

    def __await__(self) -> Generator[Any, Any, Any]:
        coro, value = self._coro, self._blocker
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # cancellation and errors go into the coroutine
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value
