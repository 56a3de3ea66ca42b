"""The batcher over real ONNX Runtime sessions, with a gate to hold batches deterministically."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from ortserve.errors import DeadlineExceeded, InvalidInput, ResourceExhausted
from ortserve.runtime.session import OrtSession
from ortserve.scheduler.batcher import Batcher, BatcherConfig, idle_inline
from ortserve.scheduler.in_flight import InFlight
from ortserve.scheduler.observer import NullObserver
from ortserve.scheduler.stats import VersionStats
from tests import onnx_models
from tests.patterns import LOGGED

W = np.random.default_rng(0).standard_normal((16, 4)).astype(np.float32)


class GatedSession:
    """A real session whose runs wait for the gate; records each batch's rows and run options."""

    def __init__(self, model: bytes) -> None:
        self._inner = OrtSession(ort.InferenceSession(model), ())
        self.provider = self._inner.provider
        self.gate = threading.Event()
        self.batches: list[int] = []
        self.options: list[ort.RunOptions] = []
        self.order: list[float] = []
        self.on_run: Any = None  # called (in the running thread) after each batch is computed

    def run(
        self, feeds: Mapping[str, np.ndarray], outputs: Sequence[str] | None, options: Any = None
    ) -> list[np.ndarray]:
        self.options.append(options)
        self.gate.wait(10)
        first = next(iter(feeds.values()))
        self.batches.append(int(first.shape[0]))
        self.order.extend(float(v) for v in first[:, 0])
        result = self._inner.run(feeds, outputs, options)
        if self.on_run is not None:
            self.on_run()
        return result


class Recorder(NullObserver):
    """Remembers each batch's flush reason."""

    def __init__(self) -> None:
        self.flushes: list[str] = []

    def flushed(self, reason: str) -> None:
        self.flushes.append(reason)


@pytest.fixture
def executor() -> Any:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown(wait=False, cancel_futures=True)


def make(
    session: Any, executor: Any, in_flight: InFlight | None = None, **overrides: Any
) -> tuple[Batcher, Recorder]:
    settings = {
        "max_batch_size": 8,
        "max_queue_delay_us": 0,
        "preferred_batch_sizes": (),
        "max_queue_size": 1024,
        "max_concurrent_batches": 1,
    }
    settings.update(overrides)
    recorder = Recorder()
    batcher = Batcher(
        session,
        executor,
        VersionStats(),
        BatcherConfig(**settings),
        name="model 'm' version 1",
        observer=recorder,
        in_flight=in_flight,
    )
    return batcher, recorder


def linear_feeds(rows: int, value: float | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    x = np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)
    if value is not None:
        x[:, 0] = value
    return {"x": x}


async def settle() -> None:
    for _ in range(20):
        await asyncio.sleep(0.01)


async def test_batches_form_up_to_the_limit_and_results_reach_their_callers(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    batcher, recorder = make(session, executor, max_batch_size=8)
    sizes = np.random.default_rng(7).integers(1, 5, size=12).tolist()
    first = asyncio.create_task(batcher.submit(linear_feeds(1), ["y"], 1, None))
    await settle()
    feeds = [linear_feeds(n, seed=i + 1) for i, n in enumerate(sizes)]
    tasks = [asyncio.create_task(batcher.submit(f, ["y"], int(f["x"].shape[0]), None)) for f in feeds]
    await settle()
    session.gate.set()
    results = await asyncio.gather(*tasks)
    await first
    assert all(b <= 8 for b in session.batches[1:])
    assert sum(session.batches[1:]) == sum(sizes)
    assert len(session.batches) - 1 < len(sizes)  # requests were actually batched
    for f, (arrays, timing) in zip(feeds, results, strict=True):
        np.testing.assert_allclose(arrays[0], f["x"] @ W, rtol=1e-5, atol=1e-5)
        assert timing.batch_size >= f["x"].shape[0]
    assert set(recorder.flushes) == {"delay", "full"} or set(recorder.flushes) <= {"delay", "full"}
    await batcher.aclose()


async def test_requests_with_different_non_batch_dims_go_to_different_batches(executor: Any) -> None:
    session = GatedSession(onnx_models.identity(shape=("N", "M")))
    batcher, _ = make(session, executor)
    blocker = asyncio.create_task(batcher.submit({"x": np.zeros((1, 2), np.float32)}, ["y"], 1, None))
    await settle()
    narrow = [np.full((1, 2), i, np.float32) for i in range(3)]
    wide = [np.full((2, 5), 10 + i, np.float32) for i in range(2)]
    tasks = [asyncio.create_task(batcher.submit({"x": a}, ["y"], a.shape[0], None)) for a in narrow + wide]
    await settle()
    session.gate.set()
    results = await asyncio.gather(*tasks)
    await blocker
    assert sorted(session.batches[1:]) == [3, 4]
    for a, (arrays, _) in zip(narrow + wide, results, strict=True):
        np.testing.assert_array_equal(arrays[0], a)
    await batcher.aclose()


async def test_deadline_passing_in_the_queue_fails_without_computing(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    batcher, _ = make(session, executor)
    blocker = asyncio.create_task(batcher.submit(linear_feeds(1), ["y"], 1, None))
    await settle()
    loop = asyncio.get_running_loop()
    doomed = asyncio.create_task(batcher.submit(linear_feeds(3), ["y"], 3, loop.time() + 0.05))
    with pytest.raises(DeadlineExceeded, match=r"deadline passed after .* ms in the queue"):
        await asyncio.wait_for(asyncio.shield(doomed), 5)
    session.gate.set()
    await blocker
    await settle()
    assert session.batches == [1]
    await batcher.aclose()


async def test_cancelled_request_leaves_the_queue_and_is_not_computed(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    batcher, _ = make(session, executor)
    blocker = asyncio.create_task(batcher.submit(linear_feeds(1), ["y"], 1, None))
    await settle()
    victim = asyncio.create_task(batcher.submit(linear_feeds(5), ["y"], 5, None))
    keeper = asyncio.create_task(batcher.submit(linear_feeds(2), ["y"], 2, None))
    await settle()
    assert batcher.queued == 2
    victim.cancel()
    await settle()
    assert batcher.queued == 1
    session.gate.set()
    await asyncio.gather(blocker, keeper)
    assert session.batches == [1, 2]
    await batcher.aclose()


async def test_queue_full_is_rejected_naming_the_model_and_limit(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    batcher, _ = make(session, executor, max_queue_size=2)
    tasks = [asyncio.create_task(batcher.submit(linear_feeds(1), ["y"], 1, None))]
    await settle()
    tasks += [asyncio.create_task(batcher.submit(linear_feeds(1), ["y"], 1, None)) for _ in range(2)]
    await settle()
    with pytest.raises(
        ResourceExhausted, match=r"model 'm' version 1: queue is full \(2 requests, its max_queue_size\)"
    ):
        await batcher.submit(linear_feeds(1), ["y"], 1, None)
    session.gate.set()
    await asyncio.gather(*tasks)
    await batcher.aclose()


async def test_higher_priority_is_batched_first(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    batcher, _ = make(session, executor, max_batch_size=1)
    blocker = asyncio.create_task(batcher.submit(linear_feeds(1, value=-1.0), ["y"], 1, None))
    await settle()
    tasks = [
        asyncio.create_task(batcher.submit(linear_feeds(1, value=v), ["y"], 1, None, priority))
        for v, priority in [(1.0, 0), (2.0, 0), (3.0, 5), (4.0, 1)]
    ]
    await settle()
    session.gate.set()
    await asyncio.gather(blocker, *tasks)
    assert session.order == [-1.0, 3.0, 4.0, 1.0, 2.0]
    await batcher.aclose()


async def test_a_failing_batch_fails_only_its_own_callers(executor: Any) -> None:
    session = GatedSession(onnx_models.gather(picks="P"))
    batcher, _ = make(session, executor)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    blocker = asyncio.create_task(
        batcher.submit({"data": data, "idx": np.zeros((2, 1), np.int64)}, ["out"], 2, None)
    )
    await settle()
    good = [
        asyncio.create_task(
            batcher.submit({"data": data, "idx": np.full((2, 1), i, np.int64)}, ["out"], 2, None)
        )
        for i in range(3)
    ]
    bad = asyncio.create_task(
        batcher.submit({"data": data, "idx": np.full((2, 2), 99, np.int64)}, ["out"], 2, None)
    )
    await settle()
    session.gate.set()
    results = await asyncio.gather(*good)
    with pytest.raises(
        InvalidInput,
        match=r"model 'm' version 1 failed on this input in ONNX Runtime \(Fail\)" + LOGGED,
    ):
        await bad
    await blocker
    for i, (arrays, _) in enumerate(results):
        np.testing.assert_array_equal(arrays[0], data[:, [i]])
    await batcher.aclose()


async def test_abandoned_running_batch_is_terminated(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    batcher, _ = make(session, executor)
    task = asyncio.create_task(batcher.submit(linear_feeds(2), ["y"], 2, None))
    await settle()
    assert len(session.options) == 1 and not session.options[0].terminate
    task.cancel()
    await settle()
    assert session.options[0].terminate
    session.gate.set()
    await batcher.aclose()


async def test_deadline_aware_flush_and_early_rejection(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    session.gate.set()
    batcher, recorder = make(session, executor, max_queue_delay_us=5_000_000)
    for _ in range(3):
        batcher.latency.observe(1, 400_000_000)  # 400 ms per row, learned: a wide margin on a busy machine
    loop = asyncio.get_running_loop()
    with pytest.raises(
        DeadlineExceeded, match=r"cannot finish within its deadline: .* ms left, computing 1 row"
    ):
        await batcher.submit(linear_feeds(1), ["y"], 1, loop.time() + 0.005)
    # Closed about 400 ms before the deadline instead of after the 5 s queue delay.
    await batcher.submit(linear_feeds(1), ["y"], 1, loop.time() + 0.8)
    assert recorder.flushes == ["deadline"]
    await batcher.aclose()


async def test_preferred_batch_size_closes_the_batch(executor: Any) -> None:
    session = GatedSession(onnx_models.linear())
    batcher, recorder = make(
        session, executor, max_batch_size=16, preferred_batch_sizes=(4,), max_queue_delay_us=5_000_000
    )
    tasks = [asyncio.create_task(batcher.submit(linear_feeds(1), ["y"], 1, None)) for _ in range(4)]
    await settle()
    session.gate.set()
    await asyncio.gather(*tasks)
    assert session.batches == [4]
    assert recorder.flushes == ["preferred"]
    await batcher.aclose()


async def test_a_finishing_thread_starts_the_next_batch_without_the_event_loop(executor: Any) -> None:
    """While the event loop is blocked, the thread that ran batch 1 takes and runs batch 2 itself."""
    session = GatedSession(onnx_models.linear())
    batcher, _ = make(session, executor, max_batch_size=8)
    first = asyncio.create_task(batcher.submit(linear_feeds(1, value=1.0), ["y"], 1, None))
    await settle()
    assert len(session.options) == 1  # batch 1 waits on the gate
    later = [
        asyncio.create_task(batcher.submit(linear_feeds(2, value=2.0), ["y"], 2, None)) for _ in range(3)
    ]
    await settle()
    assert len(session.options) == 1  # the others are queued behind the one execution slot
    session.gate.set()
    done = threading.Event()
    session.on_run = lambda: done.set() if len(session.batches) == 2 else None
    # Blocking the loop on purpose: no loop callback can run until batch 2 has been computed.
    assert done.wait(10), "batch 2 did not run while the event loop was blocked"
    await asyncio.gather(first, *later)
    assert session.batches == [1, 6]
    await batcher.aclose()


async def test_slow_thread_timings_do_not_close_the_inline_path(executor: Any) -> None:
    """Wall times from threads (which include GIL waits) must not stop loop-timed tiny computes."""
    session = GatedSession(onnx_models.linear())
    session.gate.set()
    batcher, recorder = make(session, executor, inline_compute_us=100_000)
    for _ in range(8):  # the first batches run on a thread until the model has an estimate
        await batcher.wait_idle()  # the thread hands back its slot after the answer: wait for it
        await batcher.submit(linear_feeds(1), ["y"], 1, None)
    assert recorder.flushes[-1] == "immediate"
    for _ in range(10):
        batcher.latency.observe(1, 500_000_000)  # as if a thread had waited 0.5 s for the GIL
    recorder.flushes.clear()
    await batcher.submit(linear_feeds(1), ["y"], 1, None)
    assert recorder.flushes == ["immediate"]
    await batcher.aclose()


@pytest.mark.parametrize(
    ("inline_us", "idle_inline_us", "on_loop"),
    [
        (1, 100_000, True),  # over inline_compute_us, under the idle limit: the loop computes it
        (1, 1, False),  # over both: a thread
        (0, 100_000, False),  # inline_compute_us 0 turns every inline path off
    ],
)
async def test_a_request_finding_the_version_idle_uses_the_idle_inline_limit(
    executor: Any, inline_us: int, idle_inline_us: int, on_loop: bool
) -> None:
    """An idle version computes a request on the event loop under `idle_inline_compute_us`, even
    when it costs more than `inline_compute_us`: nothing else waits for the loop then."""
    session = GatedSession(onnx_models.linear())
    session.gate.set()
    threads: list[int] = []
    session.on_run = lambda: threads.append(threading.get_ident())
    batcher, recorder = make(
        session, executor, inline_compute_us=inline_us, idle_inline_compute_us=idle_inline_us
    )
    for _ in range(8):  # the first batches run on a thread until the model has an estimate
        await batcher.wait_idle()
        await batcher.submit(linear_feeds(1), ["y"], 1, None)
    await batcher.wait_idle()
    threads.clear()
    recorder.flushes.clear()
    await batcher.submit(linear_feeds(1), ["y"], 1, None)
    assert (threads == [threading.get_ident()]) is on_loop
    assert (recorder.flushes == ["immediate"]) is on_loop
    await batcher.aclose()


async def test_an_idle_version_queues_a_request_while_other_calls_wait(executor: Any) -> None:
    """Another inference call in the server (even one whose message is not read yet) keeps a
    request over `inline_compute_us` off the loop, idle version or not; under it, never."""
    session = GatedSession(onnx_models.linear())
    session.gate.set()
    threads: list[int] = []
    session.on_run = lambda: threads.append(threading.get_ident())
    in_flight = InFlight()
    batcher, _ = make(session, executor, in_flight, inline_compute_us=1, idle_inline_compute_us=100_000)
    for _ in range(8):  # the first batches run on a thread until the model has an estimate
        await batcher.wait_idle()
        await batcher.submit(linear_feeds(1), ["y"], 1, None)

    async def one() -> bool:
        await batcher.wait_idle()
        threads.clear()
        await batcher.submit(linear_feeds(1), ["y"], 1, None)
        return threads == [threading.get_ident()]

    assert await one()  # alone: the loop computes it
    blocker = asyncio.get_running_loop().create_future()

    async def other_call() -> None:
        await blocker

    # Tasks, as gRPC's calls are: gather returns at once on futures already done (3.12 and newer),
    # before their done callbacks have run.
    others = [asyncio.create_task(other_call()) for _ in range(2)]
    for task in others:
        in_flight.track(task)  # type: ignore[arg-type]
    assert in_flight.others() == 1  # two counted; the asking call is one of them
    assert not await one()  # a thread, so that the loop can read the other call meanwhile
    blocker.set_result(None)
    await asyncio.gather(*others)
    assert in_flight.count == 0
    assert await one()
    await batcher.aclose()


@pytest.mark.parametrize(
    ("estimate", "others", "inline"),
    [
        (None, 0, False),  # not measured yet
        (50, 3, True),  # under inline_compute_us: queued it would run on the loop all the same
        (500, 0, True),  # under the idle limit, nobody else waiting
        (500, 1, False),  # another call waits: queue, a thread computes while the loop reads it
        (5000, 0, False),  # over both limits
    ],
)
def test_idle_inline_rule(estimate: float | None, others: int, inline: bool) -> None:
    assert idle_inline(estimate, (100, 1000), others) is inline


async def test_a_flood_of_failing_batches_logs_a_bounded_number_of_lines(executor: Any) -> None:
    """Every caller gets its correlation id; the log keeps at most a burst of ONNX Runtime texts."""
    import structlog

    session = OrtSession(ort.InferenceSession(onnx_models.gather(picks="P")), ())
    batcher, _ = make(session, executor)
    data = np.arange(8, dtype=np.float32).reshape(2, 4)
    bad = {"data": data, "idx": np.full((2, 2), 99, np.int64)}  # out of range: ONNX Runtime fails
    with structlog.testing.capture_logs() as logs:
        for _ in range(50):
            with pytest.raises(InvalidInput, match=r"in ONNX Runtime \(Fail\)" + LOGGED):
                await batcher.submit(bad, ["out"], 2, None)
    details = [e for e in logs if e["event"] == "error_detail"]
    assert 1 <= len(details) <= 5, len(details)
    assert all(isinstance(e["exc_info"], Exception) for e in details)
    await batcher.aclose()
