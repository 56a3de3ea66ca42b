"""This replica's copies of a remote store's blobs: `<root>/sha256/<aa>/<sha>.onnx`, written
through `<root>/tmp/`, at most `max_bytes` in all (0: no limit), least recently used out.

Every read hashes the file: a copy whose digest does not match is deleted and never served.
Recency survives a restart through the files' modification times. A pinned blob is never evicted:
a load pins its blob from the check of its digest until ONNX Runtime has read the file, so eviction
for another blob cannot remove the path in between (the cache may exceed its cap meanwhile).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import threading
from collections import Counter, OrderedDict
from collections.abc import Iterator
from pathlib import Path

import structlog

from ortserve.errors import logged
from ortserve.store.digest import check_sha256, hash_file
from ortserve.store.spool import fsync_dir, writing

log = structlog.get_logger(__name__)
CACHE = "the local blob cache"


class BlobCache:
    def __init__(self, root: Path | str, max_bytes: int = 0):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.blob_dir = self.root / "sha256"
        self.max_bytes = max_bytes
        with writing("creating the cache's folders", self.root, CACHE):
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.blob_dir.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._entries: OrderedDict[str, int] = OrderedDict(self._scan())
        self._bytes = sum(self._entries.values())
        self._pins: Counter[str] = Counter()

    def _scan(self) -> list[tuple[str, int]]:
        """The cached blobs, least recently used first."""
        found = []
        for path in self.blob_dir.glob("*/*.onnx"):
            with contextlib.suppress(FileNotFoundError):
                stat = path.stat()
                found.append((stat.st_mtime, path.stem, stat.st_size))
        return [(sha256, size) for _mtime, sha256, size in sorted(found)]

    @property
    def size_bytes(self) -> int:
        return self._bytes

    def cached(self) -> list[str]:
        """The cached blobs' sha256, least recently used first."""
        with self._lock:
            return list(self._entries)

    def path_for(self, sha256: str) -> Path:
        sha256 = check_sha256(sha256)
        return self.blob_dir / sha256[:2] / f"{sha256}.onnx"

    def temp_path(self, kind: str) -> Path:
        return self.tmp / f"{kind}-{secrets.token_hex(16)}.part"

    @contextlib.contextmanager
    def pinned(self, sha256: str) -> Iterator[None]:
        """Keep `sha256` from eviction for the block (cached now or added in it); on leaving, other
        blobs above the cap that no one pins are evicted (this one was just used: it stays)."""
        check_sha256(sha256)
        with self._lock:
            self._pins[sha256] += 1
        try:
            yield
        finally:
            with self._lock:
                self._pins[sha256] -= 1
                if not self._pins[sha256]:
                    del self._pins[sha256]
                self._evict(keep=sha256)

    def get(self, sha256: str) -> Path | None:
        """The cached copy, its digest checked, now the most recently used; None when it is absent
        or corrupt (a corrupt copy is deleted). Pin the blob to keep the path beyond the return."""
        with self.pinned(sha256):
            return self._get(sha256)

    def _get(self, sha256: str) -> Path | None:
        path = self.path_for(sha256)
        try:
            actual = hash_file(path)[1]
        except FileNotFoundError:
            self._forget(sha256)
            return None
        except OSError as exc:
            actual = "unreadable"
            logged("a cached blob cannot be read; it is dropped", exc, sha256=sha256, path=str(path))
        if actual != sha256:
            log.warning("cached_blob_corrupt", sha256=sha256, actual=actual)
            self.discard(sha256)
            return None
        with self._lock:
            if sha256 not in self._entries:
                return None  # discarded while it was read
            self._entries.move_to_end(sha256)
        with contextlib.suppress(OSError):
            os.utime(path)
        return path

    def add(self, source: Path, sha256: str, size: int) -> Path:
        """Move the verified file `source` into the cache (consuming it), then evict the least
        recently used blobs above the cap; the blob added stays, even when it alone is larger."""
        target = self.path_for(sha256)
        with writing("adding a blob", target, CACHE):
            target.parent.mkdir(parents=True, exist_ok=True)
            with self._lock:  # an eviction decided earlier never removes the file placed here
                os.replace(source, target)
                self._bytes += size - self._entries.pop(sha256, 0)
                self._entries[sha256] = size
                self._evict(keep=sha256)
            fsync_dir(target.parent)
        if self.max_bytes and size > self.max_bytes:
            log.warning("cached_blob_above_cap", sha256=sha256, size_bytes=size, max_bytes=self.max_bytes)
        return target

    def _evict(self, keep: str) -> None:
        """Remove least recently used blobs, neither `keep` nor pinned, until the cache fits its
        cap (under the lock, so that a blob added again meanwhile is not removed after its add)."""
        for sha256 in list(self._entries):
            if not self.max_bytes or self._bytes <= self.max_bytes:
                break
            if sha256 != keep and sha256 not in self._pins:
                self._bytes -= self._entries.pop(sha256)
                try:
                    self.path_for(sha256).unlink(missing_ok=True)
                except OSError as exc:  # the copy stays on disk, out of the count, until a restart
                    logged("an evicted cached blob cannot be removed", exc, sha256=sha256)
                log.info(
                    "cached_blob_evicted", sha256=sha256, cache_bytes=self._bytes, max_bytes=self.max_bytes
                )

    def discard(self, sha256: str) -> None:
        """Drop the cached copy, if any."""
        with self._lock:
            self._bytes -= self._entries.pop(sha256, 0)
            with contextlib.suppress(FileNotFoundError):
                self.path_for(sha256).unlink()

    def _forget(self, sha256: str) -> None:
        with self._lock:
            self._bytes -= self._entries.pop(sha256, 0)
