"""The file:// model store on a real filesystem."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from pathlib import Path

import pytest

from ortserve.errors import FailedPrecondition, InvalidInput
from ortserve.store.file import FileStore, FileStoreUpload
from ortserve.store.interface import BlobInfo

WAIT_S = 10.0


def _open(store: FileStore, data: bytes, **limits: int) -> FileStoreUpload:
    return store.open_upload(
        expected_size=len(data), expected_sha256=hashlib.sha256(data).hexdigest(), **limits
    )


def _upload(store: FileStore, data: bytes) -> Path:
    upload = _open(store, data)
    for start in range(0, len(data), 7):
        upload.write(data[start : start + 7])
    assert upload.size == len(data)
    assert upload.sha256 == hashlib.sha256(data).hexdigest()
    upload.commit()
    upload.release()  # as the registry does once the row naming the blob is committed
    return store.path_for(upload.sha256)


def test_commit_places_bytes_at_their_content_address(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    path = _upload(store, b"model bytes")
    sha = hashlib.sha256(b"model bytes").hexdigest()
    assert path == tmp_path / "sha256" / sha[:2] / f"{sha}.onnx"
    assert path.read_bytes() == b"model bytes"
    assert store.contains(sha) and store.local_path(sha) == path
    assert list(store.tmp.iterdir()) == []
    assert [(b.sha256, b.size_bytes) for b in store.blobs()] == [(sha, len(b"model bytes"))]


def test_commit_is_idempotent_for_the_same_content(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    first = _upload(store, b"same")
    second = _upload(store, b"same")
    assert first == second
    assert first.read_bytes() == b"same"
    assert list(store.tmp.iterdir()) == []


def test_commit_refuses_bytes_other_than_the_declared_ones(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload = store.open_upload(expected_size=4, expected_sha256=hashlib.sha256(b"good").hexdigest())
    upload.write(b"evil")
    with pytest.raises(
        InvalidInput, match=r"^sha256 mismatch: manifest says [0-9a-f]{64}, received bytes hash to"
    ):
        upload.commit()
    upload.abort()
    short = _open(store, b"longer")
    short.write(b"long")
    with pytest.raises(InvalidInput, match=r"^received 4 bytes but the manifest declared 6$"):
        short.commit()
    short.abort()
    assert store.blobs() == [] and list(store.tmp.iterdir()) == []


def test_abort_removes_the_temp_file(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload = _open(store, b"partial")
    upload.write(b"partial")
    assert upload.path.exists()
    upload.abort()
    assert not upload.path.exists()
    with pytest.raises(InvalidInput, match="aborted or already committed"):
        upload.commit()


def test_upload_limits_chunk_size_and_declared_size(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload = store.open_upload(expected_size=10, expected_sha256="0" * 64, max_chunk_bytes=4)
    with pytest.raises(InvalidInput, match="chunk of 5 bytes exceeds the limit of 4 bytes"):
        upload.write(b"12345")
    upload.write(b"1234")
    upload.write(b"1234")
    with pytest.raises(InvalidInput, match="more than the 10 bytes the manifest declared"):
        upload.write(b"123")
    upload.abort()


def test_temp_files_are_created_exclusively(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    upload = _open(store, b"x")
    with pytest.raises(FileExistsError):
        os.open(upload.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
    upload.abort()


def test_path_for_rejects_anything_but_a_sha256(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    with pytest.raises(InvalidInput, match="64 lowercase hex"):
        store.path_for("../../etc/passwd")
    with pytest.raises(InvalidInput, match="64 lowercase hex"):
        store.open_upload(expected_size=1, expected_sha256="../" * 21 + "a")


def test_a_corrupt_or_missing_blob_is_never_served(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    path = _upload(store, b"original")
    sha = path.stem
    path.write_bytes(b"tampered")
    tampered = hashlib.sha256(b"tampered").hexdigest()
    with pytest.raises(
        FailedPrecondition, match=rf"^blob sha256 {sha} in the model store hashes to {tampered}"
    ):
        store.local_path(sha)
    store.delete(sha)
    assert not store.contains(sha)
    with pytest.raises(FailedPrecondition, match=rf"^blob sha256 {sha} is missing from the model store$"):
        store.local_path(sha)


def test_uploading_the_bytes_again_repairs_a_corrupt_blob(tmp_path: Path) -> None:
    """A stored blob of the right size but the wrong bytes (bit rot, a torn copy) is replaced by a
    verified upload of the same content, not kept because its size matches."""
    store = FileStore(tmp_path)
    path = _upload(store, b"original")
    path.write_bytes(b"tampered")
    assert _upload(store, b"original") == path
    assert store.local_path(path.stem).read_bytes() == b"original"
    assert list(store.tmp.iterdir()) == []


def test_collect_garbage_keeps_referenced_and_young(tmp_path: Path) -> None:
    store = FileStore(tmp_path)
    kept = _upload(store, b"kept")
    orphan = _upload(store, b"orphan")
    stale = _open(store, b"old")
    stale.write(b"old")
    stale.seal()
    stale.release()  # its process died: no one holds the temp file any more
    old = time.time() - 7200
    os.utime(stale.path, (old, old))
    fresh = _open(store, b"fresh")
    found = store.collect_garbage({kept.stem}, blob_grace_s=3600)
    assert [(g.location, g.size_bytes) for g in found] == [(str(stale.path), 3)]
    assert orphan.exists() and not stale.path.exists()
    removed = [g.location for g in store.collect_garbage({kept.stem})]
    assert removed == [str(orphan)]
    assert kept.exists() and fresh.path.exists()
    fresh.abort()


def test_collect_garbage_keeps_a_blob_stored_again_after_it_was_listed(tmp_path: Path) -> None:
    """An orphan listed as garbage that a registration stores again before the removal (its row about
    to be committed) is kept: its age is checked again right before it is removed."""

    class ListedBeforeUpload(FileStore):
        def blobs(self) -> list[BlobInfo]:
            listed = super().blobs()
            _upload(self, b"again")  # the registration's place() lands between listing and removal
            return listed

    store = ListedBeforeUpload(tmp_path)
    orphan = _upload(store, b"again")
    old = time.time() - 7200
    os.utime(orphan, (old, old))
    assert store.collect_garbage(set(), blob_grace_s=3600) == []
    assert orphan.read_bytes() == b"again"


def test_abort_waits_for_a_write_in_progress(tmp_path: Path) -> None:
    """A registration cancelled while a thread writes a chunk aborts from the event loop at once; the
    abort waits for that write instead of closing the descriptor under it (where another file could
    get the same number and the chunk's bytes)."""
    in_write, release = threading.Event(), threading.Event()

    class HeldChunk(bytes):
        def __len__(self) -> int:  # write() asks for the length first: hold the write there
            in_write.set()
            assert release.wait(WAIT_S)
            return super().__len__()

    store = FileStore(tmp_path)
    upload = _open(store, b"chunk")
    failures: list[BaseException] = []

    def write() -> None:
        try:
            upload.write(HeldChunk(b"chunk"))
        except BaseException as exc:
            failures.append(exc)

    writer = threading.Thread(target=write)
    writer.start()
    assert in_write.wait(WAIT_S)
    aborter = threading.Thread(target=upload.abort)
    aborter.start()
    aborter.join(timeout=1.0)  # without the wait, abort is done by now, the write still to come
    release.set()
    writer.join(WAIT_S)
    aborter.join(WAIT_S)
    assert failures == [] and not upload.path.exists()
