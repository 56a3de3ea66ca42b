"""`ortserve db gc --grace 0` while a registration's upload is in flight: its temp file is held
(flock) from creation to commit, so gc leaves it alone while the bytes stream and while validation
reads them, and the registration completes; what a dead upload left (no one holds it) goes."""

from __future__ import annotations

import fcntl
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from ortserve.cli import main
from ortserve.records import Manifest, ModelVersionRecord
from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.store import hash_file, spool
from ortserve.store.file import FileStore
from tests import onnx_models


@pytest.fixture
def data(tmp_path: Path) -> Path:
    return tmp_path / "data"


@pytest.fixture
def engine(data: Path) -> Iterator[sa.Engine]:
    data.mkdir()
    engine = make_engine(f"sqlite:///{data / 'registry.db'}")
    upgrade(engine)
    yield engine
    engine.dispose()


def gc(capsys: pytest.CaptureFixture[str], data: Path, *flags: str) -> list[str]:
    capsys.readouterr()
    assert main(["db", "gc", "--data-dir", str(data), "--grace", "0", *flags]) == 0
    return capsys.readouterr().out.splitlines()


def test_gc_with_no_grace_leaves_an_upload_in_flight_alone(
    engine: sa.Engine, data: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    model = tmp_path / "m.onnx"
    onnx_models.linear(model, n_in=256, n_out=256)
    size, sha256 = hash_file(model)
    store = FileStore(data / "store")
    registry = Registry(engine, store, max_model_bytes=1 << 30)
    dead = store.open_upload(expected_size=size, expected_sha256=sha256)
    dead.write(b"half")
    dead.seal()
    dead.release()  # what a crash does: its descriptors, and the lock, are gone
    manifest = Manifest(name="m", size_bytes=size, sha256=sha256)
    upload = registry.begin_upload(manifest)
    data_bytes = model.read_bytes()
    upload.write(data_bytes[: size // 2])  # mid-stream

    expected = [f"would remove {dead.path} (4 bytes)", "would remove 1 file(s), 4 bytes (dry run)"]
    assert gc(capsys, data, "--dry-run") == expected
    assert gc(capsys, data) == [f"removed {dead.path} (4 bytes)", "removed 1 file(s), 4 bytes freed"]
    assert upload.path.is_file() and not dead.path.exists()

    upload.write(data_bytes[size // 2 :])
    upload.seal()  # every byte in; the writer is closed while validation reads the file
    assert gc(capsys, data) == ["removed 0 file(s), 0 bytes freed"]
    record = registry.finish_upload(upload, manifest)
    assert record.version == 1 and hash_file(store.path_for(sha256)) == (size, sha256)
    assert gc(capsys, data) == ["removed 0 file(s), 0 bytes freed"]
    assert list(store.tmp.iterdir()) == []


def test_a_temp_file_removed_before_its_lock_is_created_again(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """gc may remove a new temp file between its creation and its flock: the upload creates it again."""
    store = FileStore(tmp_path / "store")
    real_flock = fcntl.flock
    removed: list[int] = []

    def gc_first(fd: int, operation: int) -> None:
        if not removed:
            removed.append(fd)
            assert spool.remove_stale(next(store.tmp.iterdir()), 0)  # no one holds it yet
        real_flock(fd, operation)

    monkeypatch.setattr(fcntl, "flock", gc_first)
    upload = store.open_upload(expected_size=4, expected_sha256="00" * 32)
    monkeypatch.setattr(fcntl, "flock", real_flock)
    assert len(removed) == 1 and upload.path.is_file()
    assert store.collect_garbage(set(), stale_temp_s=0) == []  # held: the second file stays
    upload.abort()
    assert list(store.tmp.iterdir()) == []


def test_gc_with_no_grace_keeps_blobs_whose_row_is_on_its_way(
    engine: sa.Engine,
    data: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """gc runs right after the model and samples blobs are committed, before the row naming them."""
    model = tmp_path / "m.onnx"
    onnx_models.linear(model)
    store = FileStore(data / "store")
    registry = Registry(engine, store, max_model_bytes=1 << 30)
    record_version = registry._record_version
    outputs: list[list[str]] = []

    def gc_first(*args: object) -> ModelVersionRecord:
        outputs.append(gc(capsys, data))
        return record_version(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(registry, "_record_version", gc_first)
    samples = {"x": np.ones((2, 16), np.float32)}
    record = registry.register_file(model, "m", samples=samples)
    assert outputs == [["removed 0 file(s), 0 bytes freed"]]
    assert store.local_path(record.sha256) and store.local_path(record.samples_sha256)
    monkeypatch.undo()
    assert gc(capsys, data) == ["removed 0 file(s), 0 bytes freed"]  # referenced now
