"""One place that turns the settings into a model store: `store_url` (file:// or s3://), the blob
cache's folder and cap, and the S3 endpoint and region."""

from __future__ import annotations

import os
from pathlib import Path

from ortserve.config import ServerConfig
from ortserve.errors import InvalidInput, Unavailable
from ortserve.store.file import FileStore
from ortserve.store.interface import BlobStore

FILE = "file://"
CACHE_FOLDER = "blob-cache"


def store_url(config: ServerConfig) -> str:
    """The configured store, the default spelled out."""
    return config.store_url or f"{FILE}{config.store_dir}"


def open_store(config: ServerConfig) -> BlobStore:
    """The store `store_url` names, checked: an unusable one fails here, in one line naming the
    setting and the address."""
    url = store_url(config)
    if url.startswith(FILE):
        return _open_file(url)
    if url.startswith("s3://"):
        return _open_s3(url, config)
    raise InvalidInput(f"store_url must be file://PATH or s3://BUCKET/PREFIX, got {url!r}")


def _open_s3(url: str, config: ServerConfig) -> BlobStore:
    try:
        from ortserve.store import s3
    except ImportError as exc:
        raise InvalidInput(f"store_url {url} needs the S3 client: install ortserve[s3] (boto3)") from exc
    from ortserve.store.cache import BlobCache

    bucket, prefix = s3.parse_url(url)
    cache = BlobCache(Path(config.data_dir) / CACHE_FOLDER, config.blob_cache_bytes)
    store = s3.S3Store(s3.s3_client(config.s3_endpoint_url, config.s3_region), bucket, prefix, cache)
    store.check()
    return store


def _open_file(url: str) -> BlobStore:
    if not url[len(FILE) :]:
        raise InvalidInput(f"store_url {url!r} names no folder: use file:///absolute/path")
    root = Path(url[len(FILE) :])
    for folder in (root / "tmp", root / "sha256"):
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            reason = os.strerror(exc.errno) if exc.errno else type(exc).__name__
            raise Unavailable(f"store_url {url}: cannot use the folder {folder} ({reason})") from None
        if not os.access(folder, os.W_OK | os.X_OK):
            raise Unavailable(f"store_url {url}: cannot write to the folder {folder} (permission denied)")
    return FileStore(root)
