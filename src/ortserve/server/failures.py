"""Failed RPCs and failed stream messages: counted in metrics, logged at a bounded rate.

Under overload every rejected request is a failure; one warning line each would make the overload
worse. Each (method, code) pair may log `burst` lines per `window_s`; the rest are counted, and the
first failure of the next window logs how many were left out. Metrics count every failure.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc

from ortserve.server.errors import status_of

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


class Failures:
    """Where servicers and the interceptor report failures; gives back what the caller may see."""

    def __init__(self, count: Callable[[str, str], None], log: BoundedLog) -> None:
        self._count = count
        self._log = log

    def rpc(self, method: str, exc: BaseException, duration_ms: float) -> tuple[grpc.StatusCode, str]:
        code, message = status_of(exc, method=method)
        self._log("rpc", method, code.name, duration_ms=duration_ms, error=message)
        return code, message

    def stream_message(self, method: str, exc: BaseException) -> tuple[grpc.StatusCode, str]:
        """A message of a stream failed and is answered in-band; the stream goes on."""
        code, message = status_of(exc, method=method)
        self._count(method, code.name)
        self._log("stream_message_failed", method, code.name, error=message)
        return code, message
