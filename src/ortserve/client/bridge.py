"""Blocking gRPC calls awaited from asyncio: the calls whose status grpc.aio's client can lose.

When a server ends a client-streaming or bidirectional call while the client is still writing (a
refused upload, a stream whose token is refused), grpc.aio's client replaces the server's status
with INTERNAL "Internal error from Core" (grpc/grpc#36066). Measured here through AsyncClient:
10 of 300 refused uploads and 230 of 300 refused streams; the blocking client reported every one.
So AsyncClient makes those calls on a blocking channel, and this module joins them to the loop:
`awaited` for a call's future, `Pull` and `Guarded` for the messages gRPC's request thread sends,
`Answers` for the messages a reader thread receives. Their failures raise grpc.aio.AioRpcError, as every
AsyncClient call does.
"""

from __future__ import annotations

import asyncio
import collections
import concurrent.futures
import contextlib
import contextvars
import threading
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Iterator
from typing import Any, Generic, TypeVar

import grpc
import grpc.aio

T = TypeVar("T")

# How many answers the reader thread may hold for a consumer that has not taken them yet.
ANSWERS_AHEAD = 64


def aio_error(error: grpc.RpcError) -> grpc.aio.AioRpcError:
    """A blocking-API call's error as the AioRpcError the asyncio API raises."""
    if not isinstance(error, grpc.Call):
        raise error
    # No debug_error_string: it waits for a status from the peer, which never comes where gRPC
    # ended the call itself (a request iterator that raised, a response it could not decode).
    return grpc.aio.AioRpcError(
        error.code(),
        grpc.aio.Metadata(*(error.initial_metadata() or ())),
        grpc.aio.Metadata(*(error.trailing_metadata() or ())),
        error.details(),
    )


def on_loop(callback: Callable[[int, int], None] | None) -> Callable[[int, int], None] | None:
    """`callback` called on the running event loop, from whichever thread calls the result."""
    if callback is None:
        return None
    loop = asyncio.get_running_loop()

    def call_on_loop(sent: int, total: int) -> None:
        loop.call_soon_threadsafe(callback, sent, total)

    return call_on_loop


async def awaited(call: grpc.Future[Any]) -> Any:
    """The result of a blocking-API call's future; cancelling the awaiting task cancels the call."""
    loop = asyncio.get_running_loop()
    finished: asyncio.Future[None] = loop.create_future()

    def on_done(_: grpc.Future[Any]) -> None:
        with contextlib.suppress(RuntimeError):  # the loop closed: nothing waits any more
            loop.call_soon_threadsafe(_wake, finished)

    call.add_done_callback(on_done)
    try:
        await finished
    except asyncio.CancelledError:
        call.cancel()
        raise
    try:
        return call.result()
    except grpc.RpcError as error:
        raise aio_error(error) from None


class Pull(Generic[T]):
    """A blocking iterator for gRPC's request thread over an async iterator read on `loop`.

    Each `next` waits for the source's next item on the loop, read in a task that runs in the
    context `Pull` was made in (its contextvars), so the source is read only as fast as gRPC sends.
    An exception from the source ends the requests (the call half-closes) and is kept in `error`
    for the consumer to raise once the answers to what was sent are in.
    """

    def __init__(self, source: AsyncIterator[T], loop: asyncio.AbstractEventLoop) -> None:
        self._source = source
        self._loop = loop
        self._context = contextvars.copy_context()
        self._lock = threading.Lock()
        self._closed = False
        self._pending: concurrent.futures.Future[T] | None = None
        self._task: asyncio.Task[Any] | None = None  # the read in progress, set on the loop
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        with self._lock:
            if self._closed:
                raise StopIteration
            try:
                self._pending = self._context.run(asyncio.run_coroutine_threadsafe, self._next(), self._loop)
            except RuntimeError:  # the loop is closed
                raise StopIteration from None
            pending = self._pending
        try:
            return pending.result()
        except (StopAsyncIteration, concurrent.futures.CancelledError):
            raise StopIteration from None
        except Exception as exc:
            self.error = exc
            raise StopIteration from None

    async def _next(self) -> T:
        self._task = asyncio.current_task()
        return await anext(self._source)

    async def aclose(self) -> None:
        """Stop reading the source (on the loop): a read in progress is cancelled and waited for
        (the source may await in its cleanup), then the source is closed."""
        with self._lock:
            self._closed = True
            pending = self._pending
        if pending is not None:
            pending.cancel()  # a read not started yet never starts
        task = self._task
        if task is not None:
            if not task.done():
                task.cancel()
                await asyncio.wait([task])
            if not task.cancelled():
                task.exception()  # retrieved: nobody reads it after this
        aclose = getattr(self._source, "aclose", None)
        if aclose is not None:
            await aclose()


class Guarded(Generic[T]):
    """An iterator for gRPC's request thread that ends where its source raises, keeping the error
    in `error` for the consumer to raise (as `Pull` does): gRPC would cancel the call instead."""

    def __init__(self, source: Iterator[T]) -> None:
        self._source = source
        self.error: BaseException | None = None

    def __iter__(self) -> Iterator[T]:
        return self

    def __next__(self) -> T:
        try:
            return next(self._source)
        except StopIteration:
            raise
        except Exception as exc:
            self.error = exc
            raise StopIteration from None

    async def aclose(self) -> None:
        """Nothing to do: the source is read on gRPC's thread, which stops with the call."""


S = TypeVar("S")


def request_source(
    items: Iterable[S] | AsyncIterable[S], convert: Callable[[int, S], T], loop: asyncio.AbstractEventLoop
) -> Pull[T] | Guarded[T]:
    """The messages gRPC's request thread sends, `convert(i, item)` for each item: an iterable is read
    on that thread, an async iterable on `loop`."""
    if isinstance(items, AsyncIterable):

        async def converted(source: AsyncIterable[S]) -> AsyncIterator[T]:
            i = 0
            async for item in source:
                yield convert(i, item)
                i += 1

        return Pull(converted(items), loop)
    return Guarded(convert(i, item) for i, item in enumerate(items))


class _End:
    """The last item a reader hands over: the call's error, or None when it ended OK."""

    def __init__(self, error: grpc.aio.AioRpcError | None) -> None:
        self.error = error


class Answers(Generic[T]):
    """The messages of a blocking streaming call, read on a thread of its own and handed to the loop.

    The thread holds at most ANSWERS_AHEAD messages the consumer has not taken, so a slow consumer
    slows the stream as grpc.aio's flow control would; it wakes the loop only when the consumer
    waits. `close`, then cancelling the call, lets the thread go.
    """

    def __init__(self, call: Iterator[T], loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._lock = threading.Lock()
        self._ready: collections.deque[T | _End] = collections.deque()
        self._waiter: asyncio.Future[None] | None = None
        self._room = threading.Semaphore(ANSWERS_AHEAD)
        self._closed = False
        threading.Thread(target=self._read, args=(call,), name="ortserve-stream-answers", daemon=True).start()

    def _read(self, call: Iterator[T]) -> None:
        try:
            for message in call:
                self._room.acquire()
                if self._closed:
                    return
                self._hand_over(message)
        except grpc.RpcError as error:
            if self._closed:  # cancelled by `close`'s caller: nobody reads on, and a cancelled
                return  # call's debug_error_string would wait for a status that never comes
            self._hand_over(_End(aio_error(error)))
            return
        self._hand_over(_End(None))

    def _hand_over(self, item: T | _End) -> None:
        with self._lock:
            self._ready.append(item)
            waiter, self._waiter = self._waiter, None
        if waiter is not None:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody takes it
                self._loop.call_soon_threadsafe(_wake, waiter)

    def __aiter__(self) -> AsyncIterator[T]:
        return self

    async def __anext__(self) -> T:
        while True:
            with self._lock:
                if self._ready:
                    item = self._ready[0]
                    if not isinstance(item, _End):  # the end stays: later reads end the same way
                        self._ready.popleft()
                    break
                waiter = self._waiter = self._loop.create_future()
            await waiter
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error
            raise StopAsyncIteration
        self._room.release()
        return item

    def close(self) -> None:
        self._closed = True
        self._room.release()  # wakes a reader waiting for room


def _wake(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_result(None)


__all__ = ["ANSWERS_AHEAD", "Answers", "Guarded", "Pull", "aio_error", "awaited", "on_loop", "request_source"]
