"""The error table: what a caller sees for each kind of exception."""

from __future__ import annotations

import grpc

from ortserve.errors import InvalidInput
from ortserve.server.errors import status_of


def test_domain_errors_keep_their_message_and_others_do_not() -> None:
    assert status_of(InvalidInput("input 'x' has 3 dims")) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "input 'x' has 3 dims",
    )
    code, message = status_of(KeyError("/secret/path"))
    assert code is grpc.StatusCode.INTERNAL and "/secret" not in message
    assert status_of(NotImplementedError("Method not implemented!")) == (
        grpc.StatusCode.UNIMPLEMENTED,
        "this method is not implemented by this server",
    )
