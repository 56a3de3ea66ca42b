"""Content-addressed model store: `<root>/sha256/<aa>/<sha>.onnx`, written through `<root>/tmp/`.

Bytes go to a temp file we create with O_EXCL (so no symlink or hardlink planted by anyone can be
there), are hashed while written, fsynced, and renamed into place; the database row is committed
only afterwards, so a crash leaves at most an orphan blob that `collect_garbage` removes.
"""

from __future__ import annotations

import hashlib
import os
import re
import secrets
import time
from pathlib import Path

from ortserve.errors import InvalidInput

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
STALE_TEMP_S = 3600.0


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
        while view:
            written = os.write(self._fd, view)
            view = view[written:]
        self._hash.update(chunk)
        self.size += len(chunk)

    def seal(self) -> None:
        """Flush the bytes to disk and close the file; idempotent."""
        if self._fd is not None:
            os.fsync(self._fd)
            os.close(self._fd)
            self._fd = None

    def abort(self) -> None:
        """Drop the temp file; idempotent."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self.path.unlink(missing_ok=True)
        self.closed = True


class ModelStore:
    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.blobs = self.root / "sha256"
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

    def collect_garbage(
        self, referenced: set[str], *, stale_temp_s: float = STALE_TEMP_S, blob_grace_s: float = 0.0
    ) -> list[Path]:
        """Remove blobs whose sha256 is not in `referenced` and temp files older than `stale_temp_s`.

        A blob committed less than `blob_grace_s` ago is kept: its database row may be on its way
        (a registration in flight on another replica); pass a grace longer than a registration.
        """
        removed: list[Path] = []
        now = time.time()
        for blob in self.blobs.glob("*/*.onnx"):
            if blob.stem not in referenced and now - blob.stat().st_mtime >= blob_grace_s:
                blob.unlink(missing_ok=True)
                removed.append(blob)
        for temp in self.tmp.iterdir():
            if now - temp.stat().st_mtime > stale_temp_s:
                temp.unlink(missing_ok=True)
                removed.append(temp)
        return removed


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
