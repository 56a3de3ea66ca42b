"""The one table from domain errors to gRPC status codes."""

from __future__ import annotations

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

INTERNAL_MESSAGE = "internal error; the server logged the details"


def status_of(exc: BaseException) -> tuple[grpc.StatusCode, str]:
    """Code and message for `exc`; anything that is not a domain error is a bug: INTERNAL, fixed text."""
    if isinstance(exc, errors.OrtserveError):
        for kind, code in STATUS_BY_ERROR:
            if isinstance(exc, kind):
                return code, str(exc)
    return grpc.StatusCode.INTERNAL, INTERNAL_MESSAGE
