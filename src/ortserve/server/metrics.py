"""Prometheus metrics on their own port; one registry per server so tests can build several."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server

_RPC_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)


class Metrics:
    """What operators watch: RPCs by method and status, and their durations."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.rpc_total = Counter(
            "ortserve_rpc_total", "RPCs handled, by method and status code", ["method", "code"], registry=self.registry
        )
        self.rpc_seconds = Histogram(
            "ortserve_rpc_duration_seconds", "RPC handling time", ["method"], buckets=_RPC_BUCKETS,
            registry=self.registry,
        )

    def observe_rpc(self, method: str, code: str, seconds: float) -> None:
        self.rpc_total.labels(method, code).inc()
        self.rpc_seconds.labels(method).observe(seconds)

    def serve(self, host: str, port: int) -> int:
        """Start the HTTP endpoint; return its bound port (0 picks a free one)."""
        server, _thread = start_http_server(port, addr=host, registry=self.registry)
        return int(server.server_port)
