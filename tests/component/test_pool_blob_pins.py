"""A load reads its model file inside the store's `pinned` block: a file the store takes back when
the block ends (the blob cache evicting it) has been read by then, and the version serves."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

import numpy as np

from ortserve.records import ModelVersionRecord, VersionState
from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.runtime.session import SessionDefaults
from ortserve.scheduler.pool import ModelPool
from ortserve.store.file import FileStore
from tests import onnx_models


async def test_a_load_reads_its_file_while_the_store_keeps_it(tmp_path: Path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'registry.db'}")
    upgrade(engine)
    registry = Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    onnx_models.linear(tmp_path / "linear.onnx")
    registry.register_file(tmp_path / "linear.onnx", "linear")
    lent: list[Path] = []

    @contextmanager
    def evicted_on_exit(record: ModelVersionRecord) -> Iterator[Path]:
        path = tmp_path / f"lent-{len(lent)}.onnx"
        shutil.copyfile(registry.store.local_path(record.sha256), path)
        lent.append(path)
        try:
            yield path
        finally:
            path.unlink()

    with ThreadPoolExecutor(2) as executor:
        pool = ModelPool(executor, SessionDefaults(intra_op_threads=1), blob_path=evicted_on_exit)
        try:
            pool.sync(registry.all_versions())
            slot = await pool.load("linear", 1)
            assert slot.state is VersionState.READY and len(lent) == 1 and not lent[0].exists()
            assert slot.session is not None
            x = np.ones((2, 16), np.float32)
            assert slot.session.run({"x": x})[0].shape == (2, 4)
        finally:
            await pool.aclose()
    engine.dispose()
