"""The one table from domain errors to gRPC status codes, and the only way errors reach callers.

A domain error's message is written for the caller. Anything else is a bug or a dependency's
failure: the caller gets INTERNAL with a fixed text and a correlation id, and the log line with the
same id holds the exception and its traceback.
"""

from __future__ import annotations

from typing import Any

import grpc

from ortserve import errors

STATUS_BY_ERROR: tuple[tuple[type[errors.OrtserveError], grpc.StatusCode], ...] = (
    (errors.InvalidInput, grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound, grpc.StatusCode.NOT_FOUND),
    (errors.AlreadyExists, grpc.StatusCode.ALREADY_EXISTS),
    (errors.FailedPrecondition, grpc.StatusCode.FAILED_PRECONDITION),
    (errors.Aborted, grpc.StatusCode.ABORTED),
    (errors.ResourceExhausted, grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded, grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unavailable, grpc.StatusCode.UNAVAILABLE),
    (errors.Unauthenticated, grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied, grpc.StatusCode.PERMISSION_DENIED),
)

INTERNAL_MESSAGE = "internal error"


def code_of(exc: BaseException) -> grpc.StatusCode:
    """The status code for `exc`; anything that is not a domain error is INTERNAL, except the
    NotImplementedError that generated servicer bases raise for a method nobody implemented."""
    if isinstance(exc, errors.OrtserveError):
        for kind, code in STATUS_BY_ERROR:
            if isinstance(exc, kind):
                return code
    if type(exc) is NotImplementedError:
        return grpc.StatusCode.UNIMPLEMENTED
    return grpc.StatusCode.INTERNAL


def status_of(exc: BaseException, **where: Any) -> tuple[grpc.StatusCode, str]:
    """Code and message a caller may see for `exc`.

    INTERNAL is logged here, once, with a correlation id that its fixed message carries; `where`
    (method, model, ...) goes into that log line.
    """
    code = code_of(exc)
    if code is grpc.StatusCode.UNIMPLEMENTED:
        return code, "this method is not implemented by this server"
    if code is not grpc.StatusCode.INTERNAL:
        return code, str(exc)
    return code, errors.logged(INTERNAL_MESSAGE, exc, level="error", **where)
