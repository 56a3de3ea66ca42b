"""The s3:// store and its blob cache against a real S3-protocol server on loopback."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import pytest

from ortserve.config import ServerConfig
from ortserve.errors import FailedPrecondition, InvalidInput, Unavailable
from ortserve.store import open_store
from ortserve.store.cache import BlobCache
from ortserve.store.interface import BlobInfo
from ortserve.store.s3 import S3Store, S3Upload
from tests.store.conftest import S3Server

MiB = 1 << 20
PART = 5 * MiB  # S3's smallest part
WAIT_S = 10.0


def replica(server: S3Server, bucket: str, folder: Path, cap: int = 0) -> S3Store:
    """One replica's view of the store: its own client and blob cache under `folder`."""
    return S3Store(server.client(), bucket, "team/models", BlobCache(folder, cap), part_bytes=PART)


def put(store: S3Store, data: bytes, *, declared: bytes | None = None, chunk: int = MiB) -> S3Upload:
    """Stream `data` in `chunk`s as an upload declared as `declared` (default: `data`), not committed."""
    declared = data if declared is None else declared
    upload = store.open_upload(
        expected_size=len(declared), expected_sha256=hashlib.sha256(declared).hexdigest()
    )
    for start in range(0, len(data), chunk):
        upload.write(data[start : start + chunk])
    return upload


def blob(size: int, seed: int) -> bytes:
    return hashlib.sha256(str(seed).encode()).digest() * (size // 32) + b"x" * (size % 32)


def keys(server: S3Server, bucket: str) -> list[str]:
    listed = server.client().list_objects_v2(Bucket=bucket).get("Contents", [])
    return sorted(item["Key"] for item in listed)


def unfinished(server: S3Server, bucket: str) -> list[str]:
    return [u["Key"] for u in server.client().list_multipart_uploads(Bucket=bucket).get("Uploads", [])]


def test_upload_commit_contains_and_fetch(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    writer = replica(s3_server, bucket, tmp_path / "a")
    data = blob(100_000, seed=1)
    sha = hashlib.sha256(data).hexdigest()
    assert not writer.contains(sha)
    upload = put(writer, data, chunk=7_000)
    assert not upload.multipart and keys(s3_server, bucket) == []  # nothing visible before the commit
    upload.commit()
    assert keys(s3_server, bucket) == [f"team/models/blobs/{sha}"]
    assert writer.contains(sha) and writer.location == f"s3://{bucket}/team/models"
    assert writer.cache.cached() == [sha]  # the spool became the writer's cached copy
    assert list(writer.cache.tmp.iterdir()) == []

    reader = replica(s3_server, bucket, tmp_path / "b")
    assert reader.cache.cached() == []
    path = reader.local_path(sha)
    assert path == reader.path_for(sha) and path.read_bytes() == data
    s3_server.client().delete_object(Bucket=bucket, Key=f"team/models/blobs/{sha}")
    assert reader.local_path(sha).read_bytes() == data  # a hit does not touch the store
    assert [b.sha256 for b in writer.blobs()] == []


def test_a_model_above_the_part_size_goes_up_in_parts(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = replica(s3_server, bucket, tmp_path)
    data = blob(2 * PART + 3 * MiB, seed=2)
    sha = hashlib.sha256(data).hexdigest()
    upload = put(store, data)
    assert upload.multipart
    assert unfinished(s3_server, bucket) == [f"team/models/blobs/{sha}"]  # two parts sent as they arrived
    assert keys(s3_server, bucket) == []
    upload.commit()
    head = s3_server.client().head_object(Bucket=bucket, Key=f"team/models/blobs/{sha}")
    assert head["ContentLength"] == len(data) and head["ETag"].endswith('-3"')
    assert unfinished(s3_server, bucket) == []
    assert replica(s3_server, bucket, tmp_path / "other").local_path(sha).read_bytes() == data


@pytest.mark.parametrize("size", [64_000, 2 * PART + MiB], ids=["one_put", "multipart"])
def test_a_digest_mismatch_leaves_nothing_visible(
    s3_server: S3Server, bucket: str, tmp_path: Path, size: int
) -> None:
    store = replica(s3_server, bucket, tmp_path)
    declared, received = blob(size, seed=3), blob(size, seed=4)
    upload = put(store, received, declared=declared)
    with pytest.raises(
        InvalidInput, match=r"^sha256 mismatch: manifest says [0-9a-f]{64}, received bytes hash to"
    ):
        upload.commit()
    upload.abort()
    deadline = time.monotonic() + WAIT_S
    while unfinished(s3_server, bucket) and time.monotonic() < deadline:
        time.sleep(0.05)  # the multipart upload is aborted in the background
    assert unfinished(s3_server, bucket) == [] and keys(s3_server, bucket) == []
    assert store.cache.cached() == [] and list(store.cache.tmp.iterdir()) == []


def test_the_cache_keeps_its_cap_least_recently_used_out(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    writer = replica(s3_server, bucket, tmp_path / "writer")
    blobs = {name: blob(300_000, seed=i) for i, name in enumerate("abc")}
    sha = {name: hashlib.sha256(data).hexdigest() for name, data in blobs.items()}
    for data in blobs.values():
        put(writer, data).commit()
    reader = replica(s3_server, bucket, tmp_path / "reader", cap=700_000)  # room for two
    reader.local_path(sha["a"])
    reader.local_path(sha["b"])
    reader.local_path(sha["a"])  # a is now more recent than b
    reader.local_path(sha["c"])
    assert reader.cache.cached() == [sha["a"], sha["c"]]
    assert not reader.path_for(sha["b"]).exists() and reader.cache.size_bytes == 600_000
    again = BlobCache(tmp_path / "reader", 700_000)  # a restart finds the same blobs, in the same order
    assert again.cached() == [sha["a"], sha["c"]] and again.size_bytes == 600_000


def test_a_corrupt_cached_copy_is_deleted_and_fetched_again(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = replica(s3_server, bucket, tmp_path)
    data = blob(50_000, seed=5)
    put(store, data).commit()
    sha = hashlib.sha256(data).hexdigest()
    cached = store.path_for(sha)
    cached.write_bytes(b"flipped" + data[7:])
    assert store.local_path(sha).read_bytes() == data
    cached.write_bytes(data[:-1])  # truncated
    assert store.local_path(sha).read_bytes() == data
    assert store.cache.cached() == [sha] and store.cache.size_bytes == len(data)


def test_bytes_in_the_store_that_do_not_match_are_never_served(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    store = replica(s3_server, bucket, tmp_path)
    data = blob(50_000, seed=6)
    sha = hashlib.sha256(data).hexdigest()
    s3_server.client().put_object(Bucket=bucket, Key=f"team/models/blobs/{sha}", Body=b"not the model")
    actual = hashlib.sha256(b"not the model").hexdigest()
    expected = (
        rf"^blob sha256 {sha} in the model store s3://{bucket}/team/models hashes to {actual}: it is corrupt"
    )
    with pytest.raises(FailedPrecondition, match=expected):
        store.local_path(sha)
    assert store.cache.cached() == [] and list(store.cache.tmp.iterdir()) == []
    assert not store.path_for(sha).exists()
    missing = hashlib.sha256(b"never stored").hexdigest()
    with pytest.raises(
        FailedPrecondition, match=rf"^blob sha256 {missing} is missing from the model store s3://"
    ):
        store.local_path(missing)


def test_garbage_orphans_and_unfinished_uploads(s3_server: S3Server, bucket: str, tmp_path: Path) -> None:
    store = replica(s3_server, bucket, tmp_path)
    kept, orphan = blob(1000, seed=7), blob(2000, seed=8)
    put(store, kept).commit()
    put(store, orphan).commit()
    dead = blob(PART + MiB, seed=9)
    left = put(store, dead)  # mid-upload: one part sent
    referenced = {hashlib.sha256(kept).hexdigest()}
    in_flight = store.collect_garbage(referenced, stale_temp_s=0, dry_run=True)
    assert str(left.path) not in [g.location for g in in_flight]  # its spool is held (flock)
    left.seal()
    left._spool.release()  # the replica dies, never finishing: its descriptors and lock are gone
    assert store.collect_garbage(referenced, blob_grace_s=3600, stale_temp_s=3600) == []
    found = store.collect_garbage(referenced, stale_temp_s=0, dry_run=True)
    orphan_key = f"s3://{bucket}/team/models/blobs/{hashlib.sha256(orphan).hexdigest()}"
    assert [(g.location, g.size_bytes) for g in found] == [
        (orphan_key, 2000),
        (f"s3://{bucket}/team/models/blobs/{hashlib.sha256(dead).hexdigest()} (unfinished upload)", PART),
        (str(left.path), PART + MiB),
    ]
    assert store.collect_garbage(referenced, stale_temp_s=0) == found
    assert keys(s3_server, bucket) == [f"team/models/blobs/{h}" for h in referenced]
    assert unfinished(s3_server, bucket) == [] and not left.path.exists()
    assert not store.path_for(hashlib.sha256(orphan).hexdigest()).exists()


def test_garbage_keeps_a_blob_stored_again_after_it_was_listed(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    """An orphan listed as old garbage that a registration stores again before the removal (its row
    about to be committed) is kept: its age is checked again right before it is deleted."""
    data = blob(1000, seed=10)

    class ListedBeforeUpload(S3Store):
        def blobs(self) -> list[BlobInfo]:
            listed = [dataclasses.replace(b, modified=b.modified - 7200) for b in super().blobs()]
            put(self, data).commit()  # the registration's commit lands between listing and removal
            return listed

    store = ListedBeforeUpload(
        s3_server.client(), bucket, "team/models", BlobCache(tmp_path), part_bytes=PART
    )
    put(store, data).commit()
    assert store.collect_garbage(set(), blob_grace_s=3600) == []
    assert keys(s3_server, bucket) == [f"team/models/blobs/{hashlib.sha256(data).hexdigest()}"]


def test_an_unusable_store_fails_at_start_in_one_line(s3_server: S3Server, tmp_path: Path) -> None:
    def opening(url: str, endpoint: str = s3_server.endpoint) -> ServerConfig:
        return ServerConfig(data_dir=str(tmp_path), store_url=url, s3_endpoint_url=endpoint)

    with pytest.raises(
        Unavailable,
        match=rf"^store_url s3://absent-bucket/p: cannot use the model store at "
        rf"{s3_server.endpoint} \(bucket 'absent-bucket' does not exist\)",
    ):
        open_store(opening("s3://absent-bucket/p"))
    closed = "http://127.0.0.1:9"  # discard: nothing listens
    with pytest.raises(
        Unavailable,
        match=rf"^store_url s3://b-u-c/p: cannot use the model store at {closed} "
        r"\(cannot connect\)",
    ):
        open_store(opening("s3://b-u-c/p", closed))
    for url in ("s3:///prefix", "s3://bucket/a/../b", "gs://bucket/p"):
        with pytest.raises(InvalidInput, match="store_url"):
            open_store(opening(url))
