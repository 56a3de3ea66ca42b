"""A shadow copy of a request runs after the caller has its answer; by then a caller using shared
memory may write its next input into the same region. The shadow must compare the same input."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from ortserve.control import ControlPlane
from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.runtime.session import SessionDefaults
from ortserve.scheduler.calls import PredictCall
from ortserve.scheduler.inference import InferenceCore
from ortserve.scheduler.pool import ModelPool
from ortserve.scheduler.shm import SharedMemoryRegistry
from ortserve.store.file import FileStore
from tests import onnx_models

ROW = 16 * 4  # one float32 row of the model `linear`


@pytest.fixture
async def core(tmp_path: Path) -> AsyncIterator[InferenceCore]:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    registry = Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    for version in (1, 2):  # the same weights: the shadow's answers equal the served ones
        path = tmp_path / f"linear{version}.onnx"
        onnx_models.linear(path)
        registry.register_file(path, "linear")
    with ThreadPoolExecutor(2) as executor:
        pool = ModelPool(executor, SessionDefaults(intra_op_threads=1))
        control = ControlPlane(registry, pool, load_on_start=True, poll_interval_s=3600)
        await control.start()
        await control.set_alias("linear", "production", 1, actor="test")
        await control.set_shadow("linear", "2", 1.0, actor="test")
        inference = InferenceCore(pool)
        inference.shared_memory = SharedMemoryRegistry(str(tmp_path))
        yield inference
        await inference.aclose()
        await control.aclose()
    engine.dispose()


async def test_the_shadow_compares_the_input_the_caller_sent(core: InferenceCore, tmp_path: Path) -> None:
    region_file = tmp_path / "inputs"
    region_file.write_bytes(np.ones((1, 16), np.float32).tobytes())
    region = core.shared_memory.register("", "in", "/inputs", 0, ROW)
    x = region.decode(lambda data: np.frombuffer(data, np.float32).reshape(1, 16), 0, ROW, "x")
    await core.predict(PredictCall(model="linear", selector="", feeds={"x": x}))
    # The caller has its answer and writes its next input into the region at once.
    with region_file.open("r+b") as file:
        file.write(np.full((1, 16), 7.0, np.float32).tobytes())
    for _ in range(500):  # bounded: the shadow runs in the background
        if core.shadows.get("linear") and core.shadows["linear"].compared:
            break
        await asyncio.sleep(0.01)
    stats = core.shadows["linear"]
    assert (stats.compared, stats.errors) == (1, 0)
    assert stats.max_abs_diff == 0.0  # the same weights on the same input
