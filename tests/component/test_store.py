"""The content-addressed model store on a real filesystem."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from ortserve.errors import InvalidInput
from ortserve.registry.store import ModelStore


def _upload(store: ModelStore, data: bytes) -> Path:
    upload = store.open_upload()
    for start in range(0, len(data), 7):
        upload.write(data[start : start + 7])
    assert upload.size == len(data)
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    return store.commit(upload)


def test_commit_places_bytes_at_their_content_address(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    path = _upload(store, b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    assert path == tmp_path / "sha256" / sha[:2] / f"{sha}.onnx"
    assert path == store.path_for(sha)
    assert path.read_bytes() == b"model bytes"
    assert list(store.tmp.iterdir()) == []


def test_commit_is_idempotent_for_the_same_content(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    first = _upload(store, b"same")
    second = _upload(store, b"same")
    assert first == second
    assert first.read_bytes() == b"same"
    assert list(store.tmp.iterdir()) == []


def test_abort_removes_the_temp_file(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    upload = store.open_upload()
    upload.write(b"partial")
    assert upload.path.exists()
    upload.abort()
    assert not upload.path.exists()
    with pytest.raises(InvalidInput, match="aborted or already committed"):
        store.commit(upload)


def test_upload_limits_chunk_size_and_declared_size(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    upload = store.open_upload(expected_size=10, max_chunk_bytes=4)
    with pytest.raises(InvalidInput, match="chunk of 5 bytes exceeds the limit of 4 bytes"):
        upload.write(b"12345")
    upload.write(b"1234")
    upload.write(b"1234")
    with pytest.raises(InvalidInput, match="more than the 10 bytes the manifest declared"):
        upload.write(b"123")
    upload.abort()


def test_temp_files_are_created_exclusively(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    upload = store.open_upload()
    with pytest.raises(FileExistsError):
        os.open(upload.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    upload.abort()


def test_path_for_rejects_anything_but_a_sha256(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    with pytest.raises(InvalidInput, match="64 lowercase hex"):
        store.path_for("../../etc/passwd")


def test_collect_garbage_keeps_referenced_and_young(tmp_path: Path) -> None:
    store = ModelStore(tmp_path)
    kept = _upload(store, b"kept")
    orphan = _upload(store, b"orphan")
    stale = store.open_upload()
    stale.write(b"old")
    stale.seal()
    old = time.time() - 7200
    os.utime(stale.path, (old, old))
    fresh = store.open_upload()
    assert [g.path for g in store.collect_garbage({kept.stem}, blob_grace_s=3600)] == [stale.path]
    assert orphan.exists()
    removed = [g.path for g in store.collect_garbage({kept.stem})]
    assert removed == [orphan]
    assert kept.exists() and fresh.path.exists()
    fresh.abort()
