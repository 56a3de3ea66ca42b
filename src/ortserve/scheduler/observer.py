"""What the batcher and the core report about one version; metrics implement it, tests may record it."""

from __future__ import annotations

from typing import Protocol


class VersionObserver(Protocol):
    """`queue_depth` and `flushed` are also called from the batcher's execution threads."""

    def queue_depth(self, depth: int) -> None: ...

    def flushed(self, reason: str) -> None: ...

    def batch(self, rows: int, compute_ns: int) -> None: ...

    def started(self) -> None: ...

    def loaded(self, requested: tuple[str, ...], active: tuple[str, ...], fallback: tuple[str, ...]) -> None:
        """A session is ready: the providers asked for, those it runs on, and those it lost."""

    def unloaded(self) -> None:
        """The session is gone (unloaded, evicted); the version may load again."""

    def finished(self, seconds: float, queue_ns: int, code: str) -> None: ...

    def close(self) -> None:
        """The version is gone from this server: drop what was kept for it."""


class NullObserver:
    def queue_depth(self, depth: int) -> None:
        pass

    def flushed(self, reason: str) -> None:
        pass

    def batch(self, rows: int, compute_ns: int) -> None:
        pass

    def started(self) -> None:
        pass

    def loaded(self, requested: tuple[str, ...], active: tuple[str, ...], fallback: tuple[str, ...]) -> None:
        pass

    def unloaded(self) -> None:
        pass

    def finished(self, seconds: float, queue_ns: int, code: str) -> None:
        pass

    def close(self) -> None:
        pass
