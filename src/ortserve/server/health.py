"""grpc.health.v1: the server, each of our services, and each model by name."""

from __future__ import annotations

from grpc_health.v1 import health, health_pb2

from ortserve.records import VersionState
from ortserve.scheduler.pool import ModelPool

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


class _Servicer(health.aio.HealthServicer):  # type: ignore[misc]  # untyped library
    """grpcio-health-checking's asyncio servicer, plus List, which it lacks (the generated base
    raises NotImplementedError)."""

    async def List(
        self, request: health_pb2.HealthListRequest, context: object
    ) -> health_pb2.HealthListResponse:
        known = self._server_status.items()
        answers = {name: health_pb2.HealthCheckResponse(status=status) for name, status in known}
        return health_pb2.HealthListResponse(statuses=answers)


class Health:
    """A model's name is SERVING while at least one of its versions is READY here."""

    def __init__(self, pool: ModelPool, services: tuple[str, ...]) -> None:
        self.servicer = _Servicer()
        self._pool = pool
        self._services = ("", *services)

    async def serving(self) -> None:
        for name in self._services:
            await self.servicer.set(name, SERVING)
        await self.update_models()

    async def update_models(self) -> None:
        for name in self._pool.names():
            ready = any(s.state is VersionState.READY for s in self._pool.versions(name))
            await self.servicer.set(name, SERVING if ready else NOT_SERVING)

    async def shutting_down(self) -> None:
        await self.servicer.enter_graceful_shutdown()
