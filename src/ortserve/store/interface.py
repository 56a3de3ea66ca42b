"""The one interface every model store backend implements, and what its garbage collection reports.

A store keeps blobs keyed by the sha256 of their bytes. An upload streams the bytes into a local
temp file (which validation reads) and, for a remote store, on to the store as they arrive; its
`commit` makes the blob visible only once the size and sha256 match what was declared. ONNX Runtime
needs a file: `local_path` gives one whose digest was checked, fetching it into the local cache of
a remote store first.

Errors: InvalidInput (bytes or a key that do not match), ResourceExhausted (no room),
Unavailable (the store cannot be reached or written; retry), FailedPrecondition (a blob is missing
or corrupt: never served). Messages name the store and the digest, never a client library's text.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from contextlib import AbstractContextManager
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

STALE_TEMP_S = 3600.0


class BlobUpload(Protocol):
    """One blob being received: `write` chunks, then `commit`, or `abort` (idempotent)."""

    @property
    def path(self) -> Path:
        """The local file holding the bytes received so far (complete after `seal`)."""
        ...

    @property
    def size(self) -> int: ...

    @property
    def sha256(self) -> str:
        """The sha256 of the bytes received so far."""
        ...

    def write(self, chunk: bytes) -> None: ...

    def seal(self) -> None:
        """Every byte has arrived: flush and close the local file; idempotent."""
        ...

    def commit(self) -> None:
        """Check the bytes against the declared size and sha256, then make the blob visible; the
        upload still holds it (garbage collection skips it) until `release`."""
        ...

    def release(self) -> None:
        """Let garbage collection judge the bytes: once the row naming the blob is committed, or
        the registration failed; idempotent."""
        ...

    def abort(self) -> None:
        """Drop the bytes received (and the hold); idempotent."""
        ...


@dataclass(frozen=True, slots=True)
class BlobInfo:
    """A stored blob: its sha256, size and when it was last written (seconds since the epoch)."""

    sha256: str
    size_bytes: int
    modified: float


@dataclass(frozen=True, slots=True)
class Garbage:
    """What `collect_garbage` removes (or would remove): an orphan blob, a stale temp file or an
    unfinished multipart upload, named by its path or URL for the operator."""

    location: str
    size_bytes: int


class BlobStore(Protocol):
    """A content-addressed blob store (file:// or s3://)."""

    @property
    def location(self) -> str:
        """The store as the operator configured it (file://... or s3://bucket/prefix)."""
        ...

    def open_upload(
        self, *, expected_size: int, expected_sha256: str, max_chunk_bytes: int | None = None
    ) -> BlobUpload: ...

    def contains(self, sha256: str) -> bool: ...

    def path_for(self, sha256: str) -> Path:
        """Where `local_path` keeps the blob on this machine; no I/O."""
        ...

    def local_path(self, sha256: str) -> Path:
        """A local file with the blob's bytes, its digest checked (fetched first where needed).

        Blocking: call it off the event loop. A blob whose bytes do not hash to `sha256` is never
        returned (FailedPrecondition naming the digest).
        """
        ...

    def pinned(self, sha256: str) -> AbstractContextManager[Path]:
        """`local_path`, kept on this machine until the block ends: a load reads the file inside it
        (a replica's cache may evict a blob `local_path` returned once another is fetched)."""
        ...

    def delete(self, sha256: str) -> None: ...

    def blobs(self) -> list[BlobInfo]:
        """Every stored blob, by sha256."""
        ...

    def collect_garbage(
        self,
        referenced: set[str],
        *,
        stale_temp_s: float = STALE_TEMP_S,
        blob_grace_s: float = 0.0,
        dry_run: bool = False,
    ) -> list[Garbage]:
        """Remove blobs whose sha256 is not in `referenced` and leftovers of uploads older than
        `stale_temp_s` (nothing with `dry_run`); returns what was (or would be) removed.

        A blob written less than `blob_grace_s` ago is kept: its database row may be on its way
        (a registration in flight on another replica); pass a grace longer than a registration.
        """
        ...


def unreferenced(blobs: Iterable[BlobInfo], referenced: set[str], grace_s: float) -> list[BlobInfo]:
    """The blobs no version refers to, written at least `grace_s` ago, by sha256."""
    now = time.time()
    found = (b for b in blobs if b.sha256 not in referenced and now - b.modified >= grace_s)
    return sorted(found, key=lambda b: b.sha256)
