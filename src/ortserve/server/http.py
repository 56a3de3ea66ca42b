"""The HTTP port (`metrics_port`): Prometheus metrics at /metrics and, when enabled, the web console
at /; one aiohttp server on the event loop, started and stopped with the gRPC server.

aiohttp rather than a thread-based server: the console reads the control plane and the pool, which
live on the event loop, and streams live events; on the loop it needs no locks. Rendering the
metrics runs in a thread (the loop-metric families are read-only there, as before), so a large
scrape never holds up requests.
"""

from __future__ import annotations

import asyncio

from aiohttp import web
from prometheus_client import CollectorRegistry
from prometheus_client.exposition import choose_encoder

from ortserve.console import Console
from ortserve.errors import Unavailable

# Longest a stop waits for HTTP requests in progress (console actions) before cancelling them.
SHUTDOWN_TIMEOUT_S = 2.0
MAX_BODY_BYTES = 64 * 1024


class HttpServer:
    def __init__(self, registry: CollectorRegistry, console: Console | None) -> None:
        self._registry = registry
        self._console = console
        app = web.Application(client_max_size=MAX_BODY_BYTES)
        app.router.add_get("/metrics", self._metrics)
        if console is not None:
            console.install(app)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=SHUTDOWN_TIMEOUT_S)
        self._listening = False

    async def start(self, host: str, port: int) -> int:
        """Listen on `host`:`port` (0 picks a free port); return the bound port."""
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_port=False)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise Unavailable(f"cannot listen on {host}:{port} for metrics and the console: {exc}") from exc
        self._listening = True
        if self._console is not None:
            self._console.start()
        return int(self._runner.addresses[0][1])

    async def close(self) -> None:
        """Stop listening, end live event streams, and free the port."""
        if self._console is not None:
            await self._console.aclose()
        if self._listening:
            self._listening = False
            await self._runner.cleanup()

    async def _metrics(self, request: web.Request) -> web.Response:
        encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
        body = await asyncio.to_thread(encoder, self._registry)
        return web.Response(body=body, headers={"Content-Type": content_type})
