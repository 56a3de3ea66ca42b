"""A load against the blob cache's eviction, with the interleavings forced at the exact points (a
hook in the digest check, events between the check and the open): the path a load was given is
never removed under it, and the cap holds again once no load pins the blob."""

from __future__ import annotations

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ortserve.store import cache as cache_module
from ortserve.store.digest import hash_file
from ortserve.store.s3 import S3Store
from tests.store.conftest import S3Server
from tests.store.test_s3_store import blob, put, replica

WAIT_S = 10.0
SIZE = 300_000


@pytest.fixture
def blobs(s3_server: S3Server, bucket: str, tmp_path: Path) -> dict[str, str]:
    """Two blobs in the store, by name: their sha256."""
    writer = replica(s3_server, bucket, tmp_path / "writer")
    found = {}
    for seed, name in enumerate("ab"):
        data = blob(SIZE, seed)
        put(writer, data).commit()
        found[name] = hashlib.sha256(data).hexdigest()
    return found


def _reader(s3_server: S3Server, bucket: str, tmp_path: Path) -> S3Store:
    return replica(s3_server, bucket, tmp_path / "reader", cap=SIZE)  # room for one blob


def test_a_blob_evicted_while_its_digest_is_checked_is_still_returned(
    s3_server: S3Server, bucket: str, tmp_path: Path, blobs: dict[str, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = _reader(s3_server, bucket, tmp_path)
    reader.local_path(blobs["a"])  # cached
    hooked: list[Path] = []

    def hash_then_fetch_another(path: Path) -> tuple[int, str]:
        """Right after a's digest is checked, another load fetches b (over the cap: a is the victim)."""
        result = hash_file(path)
        if path.stem == blobs["a"] and not hooked:
            hooked.append(path)
            reader.local_path(blobs["b"])
        return result

    monkeypatch.setattr(cache_module, "hash_file", hash_then_fetch_another)
    path = reader.local_path(blobs["a"])
    assert hooked == [path]
    assert hashlib.sha256(path.read_bytes()).hexdigest() == blobs["a"]
    assert reader.cache.cached() == [blobs["a"]] and reader.cache.size_bytes == SIZE


def test_a_pinned_blob_stays_until_the_load_has_read_it(
    s3_server: S3Server, bucket: str, tmp_path: Path, blobs: dict[str, str]
) -> None:
    reader = _reader(s3_server, bucket, tmp_path)
    checked, evicting_done = threading.Event(), threading.Event()

    def load() -> str:
        """What a load does: get the path, then (later) let ONNX Runtime open it."""
        with reader.pinned(blobs["a"]) as path:
            checked.set()
            assert evicting_done.wait(WAIT_S)
            return hashlib.sha256(path.read_bytes()).hexdigest()

    with ThreadPoolExecutor(1) as pool:
        loaded = pool.submit(load)
        assert checked.wait(WAIT_S)
        reader.local_path(blobs["b"])  # over the cap, between the load's check and its open
        assert sorted(reader.cache.cached()) == sorted(blobs.values())  # a is pinned: above the cap
        evicting_done.set()
        assert loaded.result(WAIT_S) == blobs["a"]
    # Unpinned, the cap holds again: b, the least recently used, goes.
    assert reader.cache.cached() == [blobs["a"]] and reader.cache.size_bytes == SIZE
    assert not reader.path_for(blobs["b"]).exists()
