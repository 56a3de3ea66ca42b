"""Domain errors. They carry no transport detail: server/errors.py maps them to gRPC codes."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import structlog

_log = structlog.get_logger("ortserve.errors")


class OrtserveError(Exception):
    """Base of every error ortserve raises on purpose; the message is shown to the caller."""


class InvalidInput(OrtserveError):
    """A request, tensor, configuration or model file is malformed."""


class NotFound(OrtserveError):
    """A model, version or alias does not exist."""


class AlreadyExists(OrtserveError):
    """The thing being created exists already."""


class FailedPrecondition(OrtserveError):
    """The request is valid but the system is not in a state to serve it."""


class ModelNotReady(FailedPrecondition):
    """A model version exists but is not loaded and warmed up on this server."""


class Aborted(OrtserveError):
    """A concurrent change got in the way; retrying the whole operation may succeed."""


class ResourceExhausted(OrtserveError):
    """A queue, size limit or quota is exceeded."""


class DeadlineExceeded(OrtserveError):
    """The request's deadline passed before it could be computed."""


class Unavailable(OrtserveError):
    """The server is shutting down or a dependency is unreachable; retry later."""


class Unauthenticated(OrtserveError):
    """The caller presented no valid credentials."""


class PermissionDenied(OrtserveError):
    """The caller is known but lacks the scope for this call."""


def logged(
    message: str,
    detail: BaseException | str,
    *,
    level: str = "warning",
    emit: Callable[..., Any] | None = None,
    **fields: Any,
) -> str:
    """`message` for the caller, with a correlation id; `detail` (a dependency's own text, which may
    hold paths or internals) goes only to the log line that carries the same id. `emit` replaces
    the logger, e.g. by one that bounds the rate of errors callers can cause."""
    correlation_id = uuid.uuid4().hex[:16]
    exc_info = detail if isinstance(detail, BaseException) else None
    text = "" if exc_info is not None else detail
    emit = emit or getattr(_log, level)
    emit(
        "error_detail",
        correlation_id=correlation_id,
        message=message,
        detail=text,
        exc_info=exc_info,
        **fields,
    )
    return f"{message} (correlation id {correlation_id}; details in the server log)"
