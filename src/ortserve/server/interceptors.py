"""One interceptor for every RPC: domain errors to status codes, one canonical log line, metrics."""

from __future__ import annotations

import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, NoReturn

import grpc
import structlog
from grpc import aio

from ortserve.server.auth import TokenAuth
from ortserve.server.errors import status_of
from ortserve.server.metrics import Metrics
from ortserve.server.rpc import Context, Handler

log = structlog.get_logger("ortserve.rpc")
HOT_METHODS = frozenset(
    {
        "/ortserve.api.v1.InferenceService/Predict",
        "/ortserve.api.v1.InferenceService/PredictStream",
        "/inference.GRPCInferenceService/ModelInfer",
        "/inference.GRPCInferenceService/ModelStreamInfer",
    }
)


class RpcInterceptor(aio.ServerInterceptor):
    """Wraps each method's handler once (cached by method name), for all four arities."""

    def __init__(self, metrics: Metrics, auth: TokenAuth | None = None) -> None:
        self._metrics = metrics
        self._auth = auth
        self._wrapped: dict[str, Handler] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler | None]],
        details: grpc.HandlerCallDetails,
    ) -> Handler | None:
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None:
            return cached
        handler = await continuation(details)
        if handler is None:
            return handler
        wrapped = self._wrap(method, handler)
        self._wrapped[method] = wrapped
        return wrapped

    def _wrap(self, method: str, handler: Handler) -> Handler:
        kwargs = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary:
            return grpc.unary_unary_rpc_method_handler(self._unary(method, handler.unary_unary), **kwargs)
        if handler.stream_unary:
            return grpc.stream_unary_rpc_method_handler(self._unary(method, handler.stream_unary), **kwargs)
        if handler.unary_stream:
            return grpc.unary_stream_rpc_method_handler(
                self._responses(method, handler.unary_stream), **kwargs
            )
        return grpc.stream_stream_rpc_method_handler(
            self._responses(method, handler.stream_stream),  # type: ignore[arg-type]
            **kwargs,
        )

    def _responses(self, method: str, behavior: Callable[..., Any]) -> Callable[..., Any]:
        """Streamed responses come from an async generator, or from a coroutine calling context.write."""
        if inspect.isasyncgenfunction(behavior):
            return self._streaming(method, behavior)
        return self._unary(method, behavior)

    def _unary(self, method: str, behavior: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            start = time.perf_counter()
            try:
                if self._auth is not None:
                    self._auth.check(method, context)
                response = await behavior(request, context)
            except Exception as exc:
                await self._fail(method, start, exc, context)
            self._done(method, start, grpc.StatusCode.OK)
            return response

        return call

    def _streaming(self, method: str, behavior: Callable[..., Any]) -> Callable[..., AsyncIterator[Any]]:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            start = time.perf_counter()
            try:
                if self._auth is not None:
                    self._auth.check(method, context)
                async for response in behavior(request, context):
                    yield response
            except Exception as exc:
                await self._fail(method, start, exc, context)
            self._done(method, start, grpc.StatusCode.OK)

        return call

    async def _fail(self, method: str, start: float, exc: Exception, context: Context) -> NoReturn:
        if isinstance(exc, aio.AbortError):
            raise exc
        code, message = status_of(exc)
        if code is grpc.StatusCode.INTERNAL:
            log.error("rpc_internal_error", method=method, exc_info=exc)
        self._done(method, start, code, message)
        await context.abort(code, message)
        raise AssertionError("context.abort returned")  # pragma: no cover

    def _done(self, method: str, start: float, code: grpc.StatusCode, message: str = "") -> None:
        elapsed = time.perf_counter() - start
        self._metrics.observe_rpc(method, code.name, elapsed)
        if code is grpc.StatusCode.OK:
            # The hot path's successful lines are debug: at info, rendering them would cost more
            # than a tiny model's whole computation. Metrics count every RPC regardless.
            emit = log.debug if method in HOT_METHODS else log.info
            emit("rpc", method=method, code=code.name, duration_ms=round(elapsed * 1000, 3))
        else:
            log.warning(
                "rpc", method=method, code=code.name, duration_ms=round(elapsed * 1000, 3), error=message
            )


__all__ = ["RpcInterceptor"]
