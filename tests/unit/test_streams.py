"""ordered_answers: every message starts as it arrives, answers leave in request order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest

from ortserve.server import streams
from ortserve.server.streams import ordered_answers


class Messages:
    """A request stream fed by the test; `read` counts the messages handed out."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[int | BaseException | None] = asyncio.Queue()
        self.read = 0

    def __aiter__(self) -> AsyncIterator[int]:
        return self

    async def __anext__(self) -> int:
        item = await self.queue.get()
        if item is None:
            raise StopAsyncIteration
        if isinstance(item, BaseException):
            raise item
        self.read += 1
        return item


async def collect(stream: AsyncIterator[int], into: list[int]) -> None:
    async for value in stream:
        into.append(value)


async def test_answers_leave_in_request_order_while_later_messages_start() -> None:
    messages = Messages()
    gates: dict[int, asyncio.Event] = {}
    started: list[int] = []

    async def answer(n: int) -> int:
        started.append(n)
        if n % 2 == 0:  # even messages wait for their gate; odd ones answer at once
            gates[n] = asyncio.Event()
            await gates[n].wait()
        return n * 10

    out: list[int] = []
    consumer = asyncio.create_task(collect(ordered_answers(messages, answer), out))
    for n in range(6):
        messages.queue.put_nowait(n)
    for _ in range(20):
        await asyncio.sleep(0)
    assert started == [0, 1, 2, 3, 4, 5]  # message 0 is still unanswered, yet all were started
    assert out == []
    for n in (4, 2):  # finish out of order: nothing may overtake message 0
        gates[n].set()
    for _ in range(20):
        await asyncio.sleep(0)
    assert out == []
    gates[0].set()
    messages.queue.put_nowait(None)
    await asyncio.wait_for(consumer, 5)
    assert out == [0, 10, 20, 30, 40, 50]


async def test_immediate_answers_are_read_and_answered_one_by_one() -> None:
    messages = Messages()

    async def answer(n: int) -> int:
        return -n

    for n in range(100):
        messages.queue.put_nowait(n)
    messages.queue.put_nowait(None)
    out: list[int] = []
    await asyncio.wait_for(collect(ordered_answers(messages, answer), out), 5)
    assert out == [-n for n in range(100)]


async def test_a_broken_request_stream_ends_the_answers_with_its_error() -> None:
    messages = Messages()
    gate = asyncio.Event()

    async def answer(n: int) -> int:
        await gate.wait()
        return n

    messages.queue.put_nowait(1)
    messages.queue.put_nowait(ConnectionResetError("peer went away"))
    out: list[int] = []
    with pytest.raises(ConnectionResetError, match="peer went away"):
        consumer = asyncio.create_task(collect(ordered_answers(messages, answer), out))
        for _ in range(10):
            await asyncio.sleep(0)
        gate.set()
        await asyncio.wait_for(consumer, 5)


async def test_closing_the_stream_cancels_unfinished_answers() -> None:
    messages = Messages()
    cancelled: list[int] = []

    async def answer(n: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    for n in range(3):
        messages.queue.put_nowait(n)
    stream = ordered_answers(messages, answer)
    consumer = asyncio.create_task(collect(stream, []))
    for _ in range(20):
        await asyncio.sleep(0)
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await stream.aclose()
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(cancelled) == [0, 1, 2]


async def test_a_message_deadline_applies_to_that_message_only() -> None:
    """Each answer runs as its own task from its first step: a timeout inside one message's answer
    cancels that answer, not the reader of the stream (it did when answers started outside a task)."""
    messages = Messages()
    never = asyncio.Event()

    async def answer(n: int) -> int:
        if n == 0:
            try:
                async with asyncio.timeout(0.01):
                    await never.wait()
            except TimeoutError:
                return -1
        assert asyncio.current_task() is not None
        return n

    out: list[int] = []
    consumer = asyncio.create_task(collect(ordered_answers(messages, answer), out))
    for n in range(3):
        messages.queue.put_nowait(n)
    messages.queue.put_nowait(None)
    done, _ = await asyncio.wait({consumer}, timeout=5)  # asyncio.wait never cancels the consumer
    assert consumer in done, f"the stream stalled; answers so far: {out}"
    assert out == [-1, 1, 2]


async def test_closing_the_stream_cancels_the_answer_still_waiting_for_room(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With the pending answers at their bound, the reader has started the next answer and waits
    to queue it: closing the stream must cancel that one too, not leave it running unowned."""
    monkeypatch.setattr(streams, "MAX_PENDING", 1)
    messages = Messages()
    cancelled: list[int] = []

    async def answer(n: int) -> int:
        try:
            await asyncio.Event().wait()
        except asyncio.CancelledError:
            cancelled.append(n)
            raise
        return n

    for n in range(3):  # 0 is awaited by the consumer, 1 fills the queue, 2 waits for room
        messages.queue.put_nowait(n)
    stream = ordered_answers(messages, answer)
    consumer = asyncio.create_task(collect(stream, []))
    for _ in range(20):
        await asyncio.sleep(0)
    assert messages.read == 3
    consumer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await consumer
    await stream.aclose()
    for _ in range(5):
        await asyncio.sleep(0)
    assert sorted(cancelled) == [0, 1, 2]
