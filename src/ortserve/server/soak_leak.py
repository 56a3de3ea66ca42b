"""TEST ONLY: a deliberate memory leak, the positive control of `bench/soak.py --leak-control`.

With ORTSERVE_SOAK_LEAK=1 in the server's environment, every unary request message is kept for
the life of the process, so the soak's growth check must fail. Nothing else reads the variable;
never set it outside that check.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

import grpc
from grpc import aio

from ortserve.server.rpc import Handler

LEAK_ENV = "ORTSERVE_SOAK_LEAK"


class KeepEveryRequest(aio.ServerInterceptor):
    """Appends each unary request message to a list that is never emptied."""

    def __init__(self) -> None:
        self.kept: list[Any] = []

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        handler = await continuation(details)
        if handler is None or handler.unary_unary is None:
            return handler
        behavior = handler.unary_unary
        kept = self.kept

        async def leaking(request: Any, context: Any) -> Any:
            kept.append(request)
            return await behavior(request, context)

        return grpc.unary_unary_rpc_method_handler(
            leaking,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def interceptors() -> list[aio.ServerInterceptor]:
    """The leak when ORTSERVE_SOAK_LEAK=1, else nothing."""
    return [KeepEveryRequest()] if os.environ.get(LEAK_ENV) == "1" else []
