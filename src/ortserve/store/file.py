"""The file:// store: `<root>/sha256/<aa>/<sha>.onnx`, written through `<root>/tmp/`.

Bytes go to a temp file (see spool.py), are hashed while written, fsynced, and renamed into place;
the database row is committed only afterwards, so a crash leaves at most an orphan blob that
`collect_garbage` removes.
"""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Iterator
from pathlib import Path

from ortserve.errors import FailedPrecondition, Unavailable, logged
from ortserve.store.digest import check_sha256, hash_file
from ortserve.store.interface import STALE_TEMP_S, BlobInfo, Garbage, unreferenced
from ortserve.store.spool import (
    FileUpload,
    fsync_dir,
    remove_stale,
    stale_files,
    stat_or_none,
    unheld,
    writing,
)


class FileStoreUpload(FileUpload):
    """An upload into a FileStore: the temp file is renamed to the blob's address on commit."""

    def __init__(
        self,
        store: FileStore,
        path: Path,
        expected_size: int,
        expected_sha256: str,
        max_chunk_bytes: int | None,
    ) -> None:
        super().__init__(
            path,
            expected_size=expected_size,
            expected_sha256=expected_sha256,
            max_chunk_bytes=max_chunk_bytes,
        )
        self._store = store

    def commit(self) -> None:
        self.verify()
        self.seal()
        self._store.place(self)


class FileStore:
    """A content-addressed folder on a local (or mounted) file system."""

    def __init__(self, root: Path | str):
        self.root = Path(root)
        self.tmp = self.root / "tmp"
        self.blob_dir = self.root / "sha256"
        with writing("creating the store's folders", self.root):
            self.tmp.mkdir(parents=True, exist_ok=True)
            self.blob_dir.mkdir(parents=True, exist_ok=True)

    @property
    def location(self) -> str:
        return f"file://{self.root.resolve()}"

    def open_upload(
        self, *, expected_size: int, expected_sha256: str, max_chunk_bytes: int | None = None
    ) -> FileStoreUpload:
        path = self.tmp / f"upload-{secrets.token_hex(16)}.part"
        return FileStoreUpload(self, path, expected_size, expected_sha256, max_chunk_bytes)

    def place(self, upload: FileUpload) -> Path:
        """Make a verified, sealed upload's bytes durable at their content address (consuming it)."""
        target = self.path_for(upload.sha256)
        with writing("storing the model", target):
            target.parent.mkdir(parents=True, exist_ok=True)
            # Replaced even when a file is there: it may be a corrupt copy of the right size, and
            # renaming verified bytes over it is atomic (readers with the old file open keep it).
            os.replace(upload.path, target)
            upload.closed = True
            os.utime(target)  # its age for collect_garbage's grace counts from now, not the last write
            fsync_dir(target.parent)
        return target

    def path_for(self, sha256: str) -> Path:
        sha256 = check_sha256(sha256)
        return self.blob_dir / sha256[:2] / f"{sha256}.onnx"

    def contains(self, sha256: str) -> bool:
        return self.path_for(sha256).is_file()

    def local_path(self, sha256: str) -> Path:
        path = self.path_for(sha256)
        try:
            actual = hash_file(path)[1]
        except FileNotFoundError:
            raise FailedPrecondition(f"blob sha256 {sha256} is missing from the model store") from None
        except OSError as exc:
            message = f"blob sha256 {sha256} cannot be read from the model store; retry later"
            raise Unavailable(logged(message, exc, level="error", path=str(path))) from exc
        if actual != sha256:
            raise FailedPrecondition(
                f"blob sha256 {sha256} in the model store hashes to {actual}: it is corrupt and is not served"
            )
        return path

    @contextlib.contextmanager
    def pinned(self, sha256: str) -> Iterator[Path]:
        """`local_path`: the store's own file, removed only by garbage collection of an orphan."""
        yield self.local_path(sha256)

    def delete(self, sha256: str) -> None:
        path = self.path_for(sha256)
        with writing("deleting a blob", path):
            path.unlink(missing_ok=True)

    def blobs(self) -> list[BlobInfo]:
        found = []
        for path in self.blob_dir.glob("*/*.onnx"):
            stat = stat_or_none(path)
            if stat is not None:
                found.append(BlobInfo(path.stem, stat.st_size, stat.st_mtime))
        return found

    def collect_garbage(
        self,
        referenced: set[str],
        *,
        stale_temp_s: float = STALE_TEMP_S,
        blob_grace_s: float = 0.0,
        dry_run: bool = False,
    ) -> list[Garbage]:
        """Orphan blobs, then temp files untouched for `stale_temp_s`, that no upload holds: one in
        flight holds a flock on its bytes, whatever their age, from its temp file's creation until
        the registry row naming the blob is committed (or the registration fails)."""
        found = [
            (self.path_for(b.sha256), b.size_bytes, blob_grace_s)
            for b in unreferenced(self.blobs(), referenced, blob_grace_s)
            if unheld(self.path_for(b.sha256))
        ]
        found.extend((path, size, stale_temp_s) for path, size in stale_files(self.tmp, stale_temp_s))
        if not dry_run:
            found = [item for item in found if remove_stale(item[0], item[2])]
        return [Garbage(str(path), size) for path, size, _age in found]
