"""Start, run and stop a server: bind, load, serve, and drain on SIGTERM."""

from __future__ import annotations

import asyncio
import gc
import signal
import sys
from typing import Any

import structlog

from ortserve.config import ServerConfig
from ortserve.errors import Unavailable
from ortserve.files import write_atomically
from ortserve.model_dir import register_model_dir
from ortserve.server.deps import Components, build_http, build_server, server_credentials

log = structlog.get_logger(__name__)


class OrtServer:
    """A running ortserve; `start` returns the bound gRPC port (0 in the config picks a free one)."""

    def __init__(
        self, config: ServerConfig, tracer_provider: Any = None, http_host: str | None = None
    ) -> None:
        self.config = config
        # The HTTP port listens on `host` unless told otherwise (workers: loopback, behind the supervisor).
        self.http_host = config.host if http_host is None else http_host
        self.parts: Components = build_server(config, tracer_provider)
        self.http = build_http(self.parts)
        self.port = 0
        self.metrics_port = 0

    async def start(self) -> int:
        parts = self.parts
        if self.config.model_dir:
            await asyncio.to_thread(
                register_model_dir, parts.control.registry, self.config.model_dir, self.config.model_name
            )
        _tune_interpreter(self.config)
        address = f"{self.config.host}:{self.config.port}"
        credentials = server_credentials(self.config)
        try:
            if credentials is None:
                self.port = parts.server.add_insecure_port(address)
            else:
                self.port = parts.server.add_secure_port(address, credentials)
        except RuntimeError as exc:
            raise Unavailable(f"cannot listen on {address}: {exc}") from exc
        await parts.control.start()
        self.metrics_port = await self.http.start(self.http_host, self.config.metrics_port)
        await parts.server.start()
        await parts.health.serving()
        log.info("server_started", address=f"{self.config.host}:{self.port}", metrics_port=self.metrics_port)
        return self.port

    async def stop(self, grace_s: float | None = None) -> None:
        """Health NOT_SERVING, refuse new RPCs, let running ones finish, then close everything."""
        parts = self.parts
        await parts.health.shutting_down()
        await parts.server.stop(self.config.grace_period_s if grace_s is None else grace_s)
        await self.http.close()
        await parts.core.aclose()
        await parts.control.aclose()
        parts.executor.shutdown(wait=True)
        # The registry's pooled connections (nothing uses the database past control.aclose).
        await asyncio.to_thread(parts.control.registry.engine.dispose)
        if parts.tracer_provider is not None:  # flush the spans still batched for export
            await asyncio.to_thread(parts.tracer_provider.shutdown)
        log.info("server_stopped")

    async def wait(self) -> None:
        await self.parts.server.wait_for_termination()


async def serve(config: ServerConfig, port_file: str | None = None) -> None:
    """Run until SIGTERM or SIGINT; write the bound port to `port_file` once serving."""
    server = OrtServer(config)
    await server.start()
    if port_file:
        await asyncio.to_thread(write_atomically, port_file, str(server.port))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    await stop.wait()
    log.info("shutdown_requested")
    await server.stop()


def _tune_interpreter(config: ServerConfig) -> None:
    """Everything allocated at start-up lives for the process: keep it out of collections, and
    collect young objects less often (each request allocates a few hundred short-lived ones).
    Batch threads get the GIL back from a busy event loop within `gil_switch_interval_us`."""
    sys.setswitchinterval(config.gil_switch_interval_us / 1e6)
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 20, 20)
