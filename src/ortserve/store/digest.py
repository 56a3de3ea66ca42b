"""Content addresses: a blob's name is the lowercase hex sha256 of its bytes."""

from __future__ import annotations

import hashlib
import re
from pathlib import Path

from ortserve.errors import InvalidInput

SHA256_RE = re.compile(r"^[0-9a-f]{64}$")
READ_BYTES = 1 << 20


def check_sha256(sha256: str) -> str:
    """`sha256` when it is 64 lowercase hex characters (never a path or a key of another shape)."""
    if not SHA256_RE.match(sha256):
        raise InvalidInput(f"sha256 must be 64 lowercase hex characters, got {sha256!r}")
    return sha256


def hash_file(path: Path) -> tuple[int, str]:
    """Size and sha256 of the file at `path`."""
    digest = hashlib.sha256()
    size = 0
    with path.open("rb") as file:
        while chunk := file.read(READ_BYTES):
            digest.update(chunk)
            size += len(chunk)
    return size, digest.hexdigest()
