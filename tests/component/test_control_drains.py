"""The control plane's background work outlives the RPC that started it: a caller who stops waiting
(a deadline, a cancelled call) must not cancel the drain of a retired version."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ortserve.control import ControlPlane
from ortserve.records import VersionState
from ortserve.registry.db import make_engine, upgrade
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


class Changes:
    """on_change (what health listens to): each call records every version's state then."""

    def __init__(self) -> None:
        self.pool: ModelPool | None = None
        self.seen: list[dict[tuple[str, int], VersionState]] = []

    async def __call__(self) -> None:
        assert self.pool is not None
        self.seen.append({slot.key: slot.state for slot in self.pool.slots()})


@pytest.fixture
def changes() -> Changes:
    return Changes()


@pytest.fixture
async def control(tmp_path: Path, changes: Changes) -> AsyncIterator[ControlPlane]:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    registry = Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path)
    registry.register_file(path, "linear")
    with ThreadPoolExecutor(2) as executor:
        pool = ModelPool(executor, SessionDefaults(intra_op_threads=1))
        changes.pool = pool
        plane = ControlPlane(registry, pool, load_on_start=True, poll_interval_s=3600, on_change=changes)
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


async def test_cancelling_a_promote_does_not_cancel_the_load_s_health_update(
    tmp_path: Path, control: ControlPlane, changes: Changes
) -> None:
    for version in (2, 3):  # 3 is the latest, loaded at once; 2 loads when promoted
        path = tmp_path / f"linear{version}.onnx"
        onnx_models.linear(path, seed=version)
        control.registry.register_file(path, "linear")
    await control.refresh()
    await control.settle()
    slot = control.pool.slot("linear", 2)
    promoting = asyncio.create_task(control.set_alias("linear", "production", 2, actor="test"))
    for _ in range(100_000):  # each turn is one pass of the loop; loading takes many
        if slot.state is VersionState.LOADING:
            break
        await asyncio.sleep(0)
    assert slot.state is VersionState.LOADING
    promoting.cancel()  # the caller's deadline passed while version 2 was warming up
    with pytest.raises(asyncio.CancelledError):
        await promoting
    # The load goes on; once it is READY, health (on_change) must hear of it.
    told = lambda: any(seen.get(("linear", 2)) is VersionState.READY for seen in changes.seen)  # noqa: E731
    await _until(told, "on_change after the load")
