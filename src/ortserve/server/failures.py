"""Failed RPCs and failed stream messages: counted in metrics, logged at a bounded rate.

Under overload every rejected request is a failure; one warning line each would make the overload
worse. Each (method, code) pair may log `burst` lines per `window_s`; the rest are counted, and the
first failure of the next window logs how many were left out. Metrics count every failure.
"""

from __future__ import annotations

from collections.abc import Callable

import grpc

from ortserve.bounded_log import BoundedLog
from ortserve.server.errors import status_of


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
