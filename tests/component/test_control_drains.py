"""The control plane's background work outlives the RPC that started it: a caller who stops waiting
(a deadline, a cancelled call) must not cancel the drain of a retired version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ortserve.control import ControlPlane
from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.records import VersionState
from ortserve.registry.service import Registry
from ortserve.runtime.session import SessionDefaults
from ortserve.scheduler.pool import ModelPool
from ortserve.store.file import FileStore
from tests import onnx_models

STEPS = 500  # bounded waits: at most STEPS turns of 10 ms


async def _until(condition: object, what: str) -> None:
    for _ in range(STEPS):
        if condition():  # type: ignore[operator]
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"still waiting for {what}")


@pytest.fixture
async def control(tmp_path: Path) -> AsyncIterator[ControlPlane]:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    registry = Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path)
    registry.register_file(path, "linear")
    with ThreadPoolExecutor(2) as executor:
        pool = ModelPool(executor, SessionDefaults(intra_op_threads=1))
        plane = ControlPlane(registry, pool, load_on_start=False, poll_interval_s=3600)
        await plane.start()
        yield plane
        await plane.aclose()
    engine.dispose()


async def test_cancelling_retire_does_not_cancel_the_drain(control: ControlPlane) -> None:
    pool = control.pool
    slot = await pool.load("linear", 1)
    assert slot.batcher is not None
    slot.enter()  # a request in flight: the drain waits for it
    retiring = asyncio.create_task(control.retire("linear", 1, actor="test"))
    await _until(lambda: slot.state is VersionState.RETIRED, "the version to be detached")
    retiring.cancel()  # the caller's deadline passed while it waited for the drain
    with pytest.raises(asyncio.CancelledError):
        await retiring
    slot.leave()  # the request finishes: the drain goes on and releases the session
    await _until(lambda: slot.batcher is None and slot.session is None, "the drain to close the version")
