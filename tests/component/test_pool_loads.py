"""One load per version at a time, shared by everyone waiting for it, and a backoff after a failure:
requests pinned to a broken version cannot start a reload each."""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ortserve.errors import FailedPrecondition
from ortserve.records import VersionState
from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.runtime.session import SessionDefaults
from ortserve.scheduler.pool import ModelPool
from ortserve.store.file import FileStore
from tests import onnx_models


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
async def pool_and_clock(tmp_path: Path) -> AsyncIterator[tuple[ModelPool, Clock]]:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    registry = Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    for name, build in (("broken", onnx_models.fails_at_run), ("linear", onnx_models.linear)):
        path = tmp_path / f"{name}.onnx"
        build(path)
        registry.register_file(path, name)
    clock = Clock()
    with ThreadPoolExecutor(2) as executor:
        pool = ModelPool(executor, SessionDefaults(intra_op_threads=1), clock=clock)
        pool.sync(registry.all_versions())
        yield pool, clock
        await pool.aclose()
    engine.dispose()


async def test_waiters_share_one_failed_load_and_retries_back_off(
    pool_and_clock: tuple[ModelPool, Clock],
) -> None:
    pool, clock = pool_and_clock
    loads = []
    pool.events.publish = lambda kind, *args, **kwargs: loads.append(kind) if kind == "loading" else None  # type: ignore[method-assign]
    outcomes = await asyncio.gather(*(pool.load("broken", 1) for _ in range(20)), return_exceptions=True)
    assert all(isinstance(o, FailedPrecondition) for o in outcomes), outcomes
    assert loads == ["loading"]  # one load for twenty callers
    slot = pool.slot("broken", 1)
    assert slot.state is VersionState.FAILED and slot.failures == 1

    with pytest.raises(
        FailedPrecondition, match=r"failed to load 1 time\(s\); the next attempt is allowed in 1\.0 s"
    ):
        await pool.load("broken", 1)
    assert loads == ["loading"]

    clock.now += 1.0  # the backoff has passed: one more attempt, then twice as long to wait
    with pytest.raises(FailedPrecondition, match="failed its warm-up"):
        await pool.load("broken", 1)
    assert loads == ["loading", "loading"]
    with pytest.raises(
        FailedPrecondition, match=r"failed to load 2 time\(s\); the next attempt is allowed in 2\.0 s"
    ):
        await pool.load("broken", 1)


async def test_concurrent_loads_of_a_good_version_load_it_once(
    pool_and_clock: tuple[ModelPool, Clock],
) -> None:
    pool, _ = pool_and_clock
    loads = []
    pool.events.publish = lambda kind, *args, **kwargs: loads.append(kind)  # type: ignore[method-assign]
    slots = await asyncio.gather(*(pool.load("linear", 1) for _ in range(10)))
    assert {id(s) for s in slots} == {id(pool.slot("linear", 1))}
    assert loads.count("loading") == 1 and loads.count("ready") == 1
    assert pool.slot("linear", 1).state is VersionState.READY


async def test_a_caller_that_gives_up_does_not_cancel_the_shared_load(
    pool_and_clock: tuple[ModelPool, Clock],
) -> None:
    pool, _ = pool_and_clock
    impatient = asyncio.ensure_future(pool.load("linear", 1))
    patient = asyncio.ensure_future(pool.load("linear", 1))
    await asyncio.sleep(0)
    impatient.cancel()
    assert (await patient).state is VersionState.READY
    assert impatient.cancelled()


async def test_a_failed_warm_up_names_the_version_and_logs_onnx_runtime_s_text(
    pool_and_clock: tuple[ModelPool, Clock],
) -> None:
    pool, _ = pool_and_clock
    with pytest.raises(FailedPrecondition) as failed:
        await pool.load("broken", 1)
    message = str(failed.value)
    assert re.fullmatch(
        r"model 'broken' version 1 failed its warm-up in ONNX Runtime \(\w+\) "
        r"\(correlation id [0-9a-f]{16}; details in the server log\)",
        message,
    ), message
    assert pool.slot("broken", 1).error == message  # what GetModelVersion and the console show
