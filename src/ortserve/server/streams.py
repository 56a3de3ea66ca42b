"""Bidirectional streams: start each message as it arrives, answer in request order."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

Req = TypeVar("Req")
Resp = TypeVar("Resp")

MAX_PENDING = 1024  # answers not yet sent, per stream; reading pauses beyond it


async def ordered_answers(
    requests: AsyncIterator[Req], answer: Callable[[Req], Awaitable[Resp]]
) -> AsyncIterator[Resp]:
    """Run `answer` for every request concurrently and yield the results in request order.

    `answer` must turn per-message failures into responses itself; anything it raises ends
    the stream.
    """
    pending: asyncio.Queue[asyncio.Task[Resp] | None] = asyncio.Queue(MAX_PENDING)

    async def read() -> None:
        try:
            async for request in requests:
                await pending.put(asyncio.ensure_future(answer(request)))
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
