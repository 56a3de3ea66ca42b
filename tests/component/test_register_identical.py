"""Replicas registering the same file at once (serve --model-dir at start) add one version."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.store.file import FileStore
from tests import onnx_models, registry_workers

REPLICAS = 4


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_replicas_registering_one_file_at_once_add_one_version(
    backend: str, request: pytest.FixtureRequest, tmp_path: Path
) -> None:
    url = str(request.getfixturevalue("sqlite_url" if backend == "sqlite" else "pg_url"))
    upgrade(make_engine(url))
    path = tmp_path / "model.onnx"
    onnx_models.linear(path, seed=7)
    first = tmp_path / "first.onnx"
    onnx_models.linear(first, seed=6)
    engine = make_engine(url)
    registry = Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    registry.register_file(first, "shared")  # the model exists: nothing else serialises the replicas

    def replica(_: int) -> int:
        engine = make_engine(url)  # each replica its own engine and connections
        try:
            registry = Registry(
                engine,
                FileStore(tmp_path / "store"),
                max_model_bytes=1 << 30,
                validate=registry_workers.validate_in_process,
            )
            return registry.register_file(path, "shared", reuse_identical=True).version
        finally:
            engine.dispose()

    with ThreadPoolExecutor(REPLICAS) as pool:
        numbers = list(pool.map(replica, range(REPLICAS)))
    assert numbers == [2] * REPLICAS
    assert [v.version for v in registry.list_versions("shared")] == [1, 2]
    other = tmp_path / "other.onnx"
    onnx_models.linear(other, seed=8)  # different bytes still make a new version
    assert registry.register_file(other, "shared", reuse_identical=True).version == 3
    engine.dispose()
