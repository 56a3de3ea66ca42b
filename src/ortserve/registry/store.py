"""Content-addressed model store: `<root>/sha256/<aa>/<sha>.onnx`, written through `<root>/tmp/`.

Bytes go to a temp file we create with O_EXCL (so no symlink or hardlink planted by anyone can be
there), are hashed while written, fsynced, and renamed into place; the database row is committed
only afterwards, so a crash leaves at most an orphan blob that `collect_garbage` removes.

A write that fails for lack of space (ENOSPC, EDQUOT, EFBIG) is RESOURCE_EXHAUSTED, any other
failure to write is UNAVAILABLE; the caller's message names neither paths nor the OS's own text
beyond the reason, which goes to the log with the path under the message's correlation id.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ortserve.errors import InvalidInput, ResourceExhausted, Unavailable, logged

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
STALE_TEMP_S = 3600.0
NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG})


@contextmanager
def _writing(step: str, path: Path) -> Iterator[None]:
    """Turn an OSError of `step` into the caller's error; the path and the OS text go to the log."""
    try:
        yield
    except OSError as exc:
        reason = os.strerror(exc.errno) if exc.errno else "input/output error"
        if exc.errno in NO_SPACE:
            message = f"the model store is full ({reason} while {step}); free space or raise its quota"
            raise ResourceExhausted(logged(message, exc, path=str(path))) from exc
        message = f"the model store cannot be written ({reason} while {step}); retry later"
        raise Unavailable(logged(message, exc, level="error", path=str(path))) from exc


class Upload:
    """One blob being written: `write` chunks, then `ModelStore.commit` or `abort`.

    `expected_size` and `max_chunk_bytes`, when given, are enforced on every write.
    """

    def __init__(self, path: Path, *, expected_size: int | None = None, max_chunk_bytes: int | None = None):
        self.path = path
        self.expected_size = expected_size
        self.max_chunk_bytes = max_chunk_bytes
        self.size = 0
        self._hash = hashlib.sha256()
        with _writing("creating the upload's temp file", path):
            self._fd: int | None = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.closed = False

    @property
    def sha256(self) -> str:
        return self._hash.hexdigest()

    def write(self, chunk: bytes) -> None:
        if self._fd is None:
            raise InvalidInput("the upload is already finished")
        if self.max_chunk_bytes is not None and len(chunk) > self.max_chunk_bytes:
            raise InvalidInput(
                f"chunk of {len(chunk)} bytes exceeds the limit of {self.max_chunk_bytes} bytes"
            )
        if self.expected_size is not None and self.size + len(chunk) > self.expected_size:
            raise InvalidInput(
                f"received more than the {self.expected_size} bytes the manifest declared "
                f"({self.size + len(chunk)} so far)"
            )
        view = memoryview(chunk)
        with _writing("writing the upload", self.path):
            while view:
                written = os.write(self._fd, view)
                view = view[written:]
        self._hash.update(chunk)
        self.size += len(chunk)

    def seal(self) -> None:
        """Flush the bytes to disk and close the file; idempotent."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            with _writing("flushing the upload", self.path):
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)

    def abort(self) -> None:
        """Drop the temp file; idempotent. A file that cannot be removed is left to garbage collection."""
        self.closed = True
        fd, self._fd = self._fd, None
        try:
            if fd is not None:
                os.close(fd)
            self.path.unlink(missing_ok=True)
        except OSError as exc:
            logged("an aborted upload's temp file was left behind", exc, path=str(self.path))


@dataclass(frozen=True, slots=True)
class Garbage:
    """A file `collect_garbage` removes (or would remove): an orphan blob or a stale temp file."""

    path: Path
    size_bytes: int


class ModelStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.blobs = self.root / "sha256"
        with _writing("creating the store's folders", self.root):
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.blobs.mkdir(parents=True, exist_ok=True)

    def open_upload(self, *, expected_size: int | None = None, max_chunk_bytes: int | None = None) -> Upload:
        path = self.tmp / f"upload-{secrets.token_hex(16)}.part"
        return Upload(path, expected_size=expected_size, max_chunk_bytes=max_chunk_bytes)

    def path_for(self, sha256: str) -> Path:
        if not SHA256_RE.match(sha256):
            raise InvalidInput(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")
        return self.blobs / sha256[:2] / f"{sha256}.onnx"

    def commit(self, upload: Upload) -> Path:
        """Make the upload's bytes durable at their content address; the temp file is consumed."""
        if upload.closed:
            raise InvalidInput("the upload was aborted or already committed")
        upload.seal()
        target = self.path_for(upload.sha256)
        with _writing("storing the model", target):
            target.parent.mkdir(parents=True, exist_ok=True)
            if target.exists() and target.stat().st_size == upload.size:
                upload.abort()  # same content already stored; refresh its age for collect_garbage
                os.utime(target)
            else:
                os.replace(upload.path, target)
                upload.closed = True
                _fsync_dir(target.parent)
        return target

    def contains(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def garbage(
        self, referenced: set[str], *, stale_temp_s: float = STALE_TEMP_S, blob_grace_s: float = 0.0
    ) -> list[Garbage]:
        """Blobs whose sha256 is not in `referenced`, and temp files older than `stale_temp_s`.

        A blob committed less than `blob_grace_s` ago is kept: its database row may be on its way
        (a registration in flight on another replica); pass a grace longer than a registration.
        An upload in flight writes its temp file at least once per chunk, so it stays young.
        """
        found: list[Garbage] = []
        now = time.time()
        for blob in sorted(self.blobs.glob("*/*.onnx")):
            if blob.stem not in referenced:
                found.extend(_aged(blob, now, blob_grace_s))
        for temp in sorted(self.tmp.iterdir()):
            found.extend(_aged(temp, now, stale_temp_s))
        return found

    def collect_garbage(
        self,
        referenced: set[str],
        *,
        stale_temp_s: float = STALE_TEMP_S,
        blob_grace_s: float = 0.0,
        dry_run: bool = False,
    ) -> list[Garbage]:
        """Remove what `garbage` finds (nothing with `dry_run`); returns what was (or would be) removed."""
        found = self.garbage(referenced, stale_temp_s=stale_temp_s, blob_grace_s=blob_grace_s)
        if not dry_run:
            for item in found:
                item.path.unlink(missing_ok=True)
        return found


def _aged(path: Path, now: float, older_than_s: float) -> list[Garbage]:
    """`path` as garbage when it was last written at least `older_than_s` ago (gone: nothing)."""
    try:
        stat = path.stat()
    except FileNotFoundError:
        return []
    return [Garbage(path, stat.st_size)] if now - stat.st_mtime >= older_than_s else []


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def hash_file(path: Path) -> tuple[int, str]:
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(1 << 20):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
