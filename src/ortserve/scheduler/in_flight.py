"""How many unary inference calls the server holds, counted from gRPC's first sight of each.

The count starts when gRPC hands the call to the server's interceptor, before its message has
been read, and ends with the call's task, however it ends (answered, failed, cancelled). Batchers
read it to tell a lone request from one of several: see `scheduler.batcher.idle_inline`.
"""

from __future__ import annotations

import asyncio


class InFlight:
    """A counter touched only on the event loop (no lock)."""

    __slots__ = ("count",)

    def __init__(self) -> None:
        self.count = 0

    def track(self, task: asyncio.Task[object]) -> None:
        """Count `task` (the call's own task) until it is done."""
        self.count += 1
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self.count -= 1

    def others(self) -> int:
        """The calls beside the one asking (which is counted itself when it came through gRPC)."""
        return max(0, self.count - 1)


__all__ = ["InFlight"]
