"""Small file helpers shared by the server and the worker supervisor (which imports no server)."""

from __future__ import annotations

from pathlib import Path


def write_atomically(path: str, text: str) -> None:
    """Write `text` to `path` so that a reader sees the old content or all of the new one."""
    tmp = Path(path + ".tmp")
    tmp.write_text(text)
    tmp.replace(path)
