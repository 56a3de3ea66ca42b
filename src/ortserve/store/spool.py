"""A blob being received into a local temp file: hashed as written, checked against what was declared.

The file is created with O_EXCL (so no symlink or hardlink planted by anyone can be there), and is
what validation reads before the store commits the bytes. It holds an exclusive flock from its
creation until it is committed or aborted: garbage collection removes only temp files no one holds,
so an upload in flight is safe whatever the grace period (a crashed process's lock is gone).

A write that fails for lack of space (ENOSPC, EDQUOT, EFBIG) is RESOURCE_EXHAUSTED, any other
failure to write is UNAVAILABLE; the caller's message names neither paths nor the OS's own text
beyond the reason, which goes to the log with the path under the message's correlation id.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from ortserve.errors import InvalidInput, ResourceExhausted, Unavailable, logged
from ortserve.store.digest import check_sha256

NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})
MODEL_STORE = "the model store"
CREATE_ATTEMPTS = 3


@contextmanager
def writing(step: str, path: Path, what: str = MODEL_STORE) -> Iterator[None]:
    """Turn an OSError of `step` into the caller's error; the path and the OS text go to the log."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else "input/output error"
        if exc.errno in NO_SPACE:
            message = f"{what} is full ({reason} while {step}); free space or raise its quota"
            raise ResourceExhausted(logged(message, exc, path=str(path))) from exc
        message = f"{what} cannot be written ({reason} while {step}); retry later"
        raise Unavailable(logged(message, exc, level="error", path=str(path))) from exc


class FileUpload:
    """One blob being written to `path`: `write` chunks, then a store's `commit`, or `abort`.

    The declared `expected_size` and `max_chunk_bytes` are enforced on every write; `verify`
    checks size and sha256 against the declaration once every byte has arrived.
    """

    def __init__(
        self,
        path: Path,
        *,
        expected_size: int,
        expected_sha256: str,
        max_chunk_bytes: int | None = None,
        what: str = MODEL_STORE,
    ):
        self.path = path
        self.expected_size = expected_size
        self.expected_sha256 = check_sha256(expected_sha256.lower())
        self.max_chunk_bytes = max_chunk_bytes
        self.size = 0
        self._what = what
        self._hash = hashlib.sha256()
        # Held by write, seal and abort: an abort (from the event loop, when the caller goes away)
        # waits for a chunk being written in a thread instead of closing the descriptor under it.
        self._lock = threading.Lock()
        with writing("creating the upload's temp file", path, what):
            fd = create_held(path)
            try:
                # The flock lives while one descriptor of the open file description does: this
                # one, after `seal` closed the writer, until `release` or `abort`.
                hold = os.dup(fd)
            except OSError:
                path.unlink(missing_ok=True)
                os.close(fd)
                raise
        self._fd: int | None = fd
        self._hold: int | None = hold
        self.closed = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, chunk: bytes) -> None:
        with self._lock:
            self._write(chunk)

    def _write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise InvalidInput("the upload is already finished")
        if self.max_chunk_bytes is not None and len(chunk) > self.max_chunk_bytes:
            raise InvalidInput(
                f"chunk of {len(chunk)} bytes exceeds the limit of {self.max_chunk_bytes} bytes"
            )
        if self.size + len(chunk) > self.expected_size:
            raise InvalidInput(
                f"received more than the {self.expected_size} bytes the manifest declared "
                f"({self.size + len(chunk)} so far)"
            )
        view = memoryview(chunk)
        with writing("writing the upload", self.path, self._what):
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        self._hash.update(chunk)
        self.size += len(chunk)

    def seal(self) -> None:
        """Flush the bytes to disk and close the file; idempotent."""
        with self._lock:
            if self._fd is None:
                return
            fd, self._fd = self._fd, None
            with writing("flushing the upload", self.path, self._what):
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def verify(self) -> None:
        """The bytes received are exactly the declared ones (size and sha256), else InvalidInput."""
        if self.closed:
            raise InvalidInput("the upload was aborted or already committed")
        if self.size != self.expected_size:
            raise InvalidInput(f"received {self.size} bytes but the manifest declared {self.expected_size}")
        if self.sha256 != self.expected_sha256:
            raise InvalidInput(
                f"sha256 mismatch: manifest says {self.expected_sha256}, received bytes hash to {self.sha256}"
            )

    def release(self) -> None:
        """Drop the flock (held on the bytes, at their address once committed); idempotent."""
        with self._lock:
            hold, self._hold = self._hold, None
        if hold is not None:
            os.close(hold)

    def abort(self) -> None:
        """Drop the temp file; idempotent. A file that cannot be removed is left to garbage collection."""
        with self._lock:
            self.closed = True
            fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            logged("an aborted upload's temp file was left behind", exc, path=str(self.path))
        finally:
            self.release()


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def stat_or_none(path: Path) -> os.stat_result | None:
    try:
        return path.stat()
    except FileNotFoundError:
        return None


def create_held(path: Path) -> int:
    """Create `path` (O_EXCL, 0600) holding an exclusive flock on it; its descriptor, open for
    writing. Garbage collection may remove the file between its creation and the lock: then it is
    created again."""
    for _attempt in range(CREATE_ATTEMPTS):
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)  # gc holds it only while it checks and removes the file
            if os.fstat(fd).st_nlink:
                return fd
        except BaseException:
            os.close(fd)
            raise
        os.close(fd)
    raise OSError(errno.EBUSY, "temp file removed by garbage collection as it was created")


def stale_files(folder: Path, older_than_s: float) -> list[tuple[Path, int]]:
    """Files in `folder` last written at least `older_than_s` ago that no upload holds, by name,
    with their sizes."""
    now = time.time()
    found = []
    for path in sorted(folder.iterdir()):
        stat = stat_or_none(path)
        if stat is not None and now - stat.st_mtime >= older_than_s and unheld(path):
            found.append((path, stat.st_size))
    return found


def unheld(path: Path) -> bool:
    """Whether no upload holds `path` (False when it cannot be opened: it is left alone)."""
    return _unheld(path, lambda _fd: True)


def remove_stale(path: Path, older_than_s: float) -> bool:
    """Remove `path` (a temp file or blob) unless an upload holds it or it was written in the last
    `older_than_s` seconds, as a blob stored again since it was listed is; whether it was removed."""

    def remove_if_old(fd: int) -> bool:
        judged, now_there = os.fstat(fd), stat_or_none(path)
        if time.time() - judged.st_mtime < older_than_s or now_there is None:
            return False
        if (now_there.st_dev, now_there.st_ino) != (judged.st_dev, judged.st_ino):
            return False  # a blob stored again since it was opened: a new file, maybe held
        path.unlink(missing_ok=True)
        return True

    return _unheld(path, remove_if_old)


def _unheld(path: Path, then: Callable[[int], bool]) -> bool:
    """`then(fd)` under `path`'s flock when no one holds it (an upload in flight does); False
    when someone does or the file cannot be opened."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return False
    try:
        return then(fd)
    finally:
        os.close(fd)
