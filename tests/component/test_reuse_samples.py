"""Registering bytes a version already has, with reuse_identical, returns that version and stores
nothing: not the manifest's sample inputs either, which no version would reference."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.store.file import FileStore


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest) -> Iterator[sa.Engine]:
    engine = make_engine(
        str(request.getfixturevalue("sqlite_url" if request.param == "sqlite" else "pg_url"))
    )
    upgrade(engine)
    yield engine
    engine.dispose()


def _samples(seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).standard_normal((3, 16)).astype(np.float32)}


def test_reusing_an_identical_version_stores_no_samples_blob(
    engine: sa.Engine, tmp_path: Path, linear_path: Path
) -> None:
    registry = Registry(engine, FileStore(tmp_path / "store"), max_model_bytes=1 << 30)
    first = registry.register_file(linear_path, "m", samples=_samples(1))
    stored = {b.sha256 for b in registry.store.blobs()}
    assert stored == {first.sha256, first.samples_sha256}

    again = registry.register_file(linear_path, "m", samples=_samples(2), reuse_identical=True)
    assert again == first
    assert {b.sha256 for b in registry.store.blobs()} == stored  # no orphan samples blob
    assert registry.referenced_blobs() == stored
    assert [v.version for v in registry.list_versions("m")] == [1]
    # Without reuse the same bytes make a new version with its own samples.
    other = registry.register_file(linear_path, "m", samples=_samples(2))
    assert other.version == 2 and other.samples_sha256 not in stored
