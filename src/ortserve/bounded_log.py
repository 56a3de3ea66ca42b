"""Log lines at a bounded rate: at most `burst` lines per key (method, code) and window.

The rest are counted, and the first line of the next window says how many were left out. Used
for failures that callers can cause at any rate (failed RPCs, failed batches): one line each would
turn an overload or a flood of bad input into a flood of log lines.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

Emit = Callable[..., Any]


@dataclass(slots=True)
class _Window:
    start: float
    logged: int = 0
    suppressed: int = 0


class BoundedLog:
    """At most `burst` lines per key and window; pure apart from `emit` and `clock`."""

    def __init__(
        self,
        emit: Emit,
        *,
        burst: int = 5,
        window_s: float = 10.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._emit = emit
        self._burst = burst
        self._window_s = window_s
        self._clock = clock
        self._windows: dict[tuple[str, str], _Window] = {}

    def __call__(self, event: str, method: str, code: str, **fields: Any) -> None:
        now = self._clock()
        key = (method, code)
        window = self._windows.get(key)
        if window is None or now - window.start >= self._window_s:
            if window is not None and window.suppressed:
                self._emit(
                    "failures_suppressed",
                    method=method,
                    code=code,
                    suppressed=window.suppressed,
                    window_s=self._window_s,
                )
            window = self._windows[key] = _Window(now)
        if window.logged < self._burst:
            window.logged += 1
            self._emit(event, method=method, code=code, **fields)
        else:
            window.suppressed += 1
