"""Bidirectional streams: start each message as it arrives, answer in request order."""

from __future__ import annotations

import asyncio
import contextlib
import sys
from collections.abc import AsyncIterator, Callable, Coroutine
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
                started = start_eagerly(answer(request))
                try:
                    await pending.put(started)
                except BaseException:  # the stream closed while waiting for room: nobody will await it
                    started.cancel()
                    raise
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
    """A task for `coro`; on Python 3.12 and later it runs at once up to its first suspension.

    Answers for tiny models are computed without suspending, so an eager task saves a stream
    message a trip through the event loop. It runs as its own task from the first step: deadlines
    (`asyncio.timeout`, `wait_for`), cancellation and context variables apply to that message only.
    Python 3.11 has no eager tasks and gets a plain one.
    """
    loop = asyncio.get_running_loop()
    if _EAGER:
        return asyncio.Task(coro, loop=loop, eager_start=True)  # type: ignore[call-arg,unused-ignore]
    return loop.create_task(coro)


_EAGER = sys.version_info >= (3, 12)
