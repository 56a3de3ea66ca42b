"""The composition root: config -> engine -> registry -> pool -> core -> servicers -> server.

Tests build the same graph through `build_server`.
"""

from __future__ import annotations

import functools
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import structlog
from grpc import aio

from ortserve import faults
from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.bounded_log import BoundedLog
from ortserve.config import ServerConfig
from ortserve.console import Console
from ortserve.control import ControlPlane
from ortserve.registry.db import open_registry
from ortserve.registry.notify import listen_url
from ortserve.registry.service import Registry
from ortserve.runtime.custom_ops import load_custom_ops
from ortserve.runtime.load_cache import LoadCache
from ortserve.runtime.session import SessionDefaults, check_providers
from ortserve.runtime.validation import validate_model
from ortserve.scheduler.in_flight import InFlight
from ortserve.scheduler.inference import InferenceCore
from ortserve.scheduler.pool import ModelPool
from ortserve.server import soak_leak
from ortserve.server.auth import TokenAuth
from ortserve.server.errors import code_of
from ortserve.server.failures import Failures
from ortserve.server.health import Health
from ortserve.server.http import HttpServer
from ortserve.server.inference_servicer import InferenceServicer
from ortserve.server.interceptors import Registrar, RpcInterceptor
from ortserve.server.metrics import Metrics
from ortserve.server.oip_servicer import OipServicer
from ortserve.server.registry_servicer import RegistryServicer
from ortserve.store import open_store

SERVICE_NAMES = (
    "ortserve.api.v1.InferenceService",
    "ortserve.api.v1.RegistryService",
    "inference.GRPCInferenceService",
)


@dataclass(slots=True)
class Components:
    """Everything a running server owns, for start-up and an orderly shutdown."""

    config: ServerConfig
    server: aio.Server
    control: ControlPlane
    core: InferenceCore
    health: Health
    metrics: Metrics
    executor: ThreadPoolExecutor
    # OpenTelemetry's TracerProvider when tracing is on: shut down last, to flush its spans.
    tracer_provider: Any = None
    # The token check the gRPC interceptor and the console share; None without tokens.
    auth: TokenAuth | None = None


def _threads(config: ServerConfig) -> tuple[int, int]:
    cores = os.cpu_count() or 1
    executor = config.executor_threads or cores
    return executor, config.intra_op_threads


def build_server(config: ServerConfig, tracer_provider: Any = None) -> Components:
    """Wire every component; nothing is started yet. `tracer_provider` (OpenTelemetry) turns
    tracing on, as `otlp_endpoint` does; tests pass one with an in-memory exporter."""
    tracer_provider = tracer_provider or _otlp_provider(config)
    auth = _auth(config)  # before anything is built: a bad token entry fails the start at once
    custom_ops = load_custom_ops(
        config.custom_op_libraries, config.custom_op_domains, extensions=config.onnxruntime_extensions
    )
    Path(config.data_dir).mkdir(parents=True, exist_ok=True)
    faults.install()  # test-only crash points, armed by ORTSERVE_TEST_FAULT
    engine = open_registry(config.db_url)
    store = open_store(config)
    validate = functools.partial(validate_model, custom_ops=custom_ops)
    registry = Registry(
        engine,
        store,
        max_model_bytes=config.max_model_bytes,
        validate=validate,
        job_timeout_s=config.toolkit_timeout_s,
        job_memory_bytes=config.toolkit_memory_bytes,
        custom_op_libraries=custom_ops.libraries,
    )
    executor_threads, intra = _threads(config)
    executor = ThreadPoolExecutor(executor_threads, thread_name_prefix="ort")
    metrics = Metrics()
    load_cache = (
        LoadCache(config.ort_cache_dir, config.optimized_model_cache_bytes, metrics.load_cache_result)
        if config.optimized_model_cache
        else None
    )
    check_providers(config.provider_specs, "server setting providers")
    defaults = SessionDefaults(
        config.provider_specs,
        config.strict_providers,
        intra,
        custom_ops,
        load_cache,
        trt_cache_dir=str(Path(config.data_dir) / "trt-engines"),
    )
    in_flight = InFlight()  # unary inference calls: counted by the interceptor, read by batchers
    pool = ModelPool(
        executor,
        defaults,
        metrics.for_version,
        memory_budget_bytes=config.memory_budget_bytes,
        inline_compute_us=config.inline_compute_us,
        blob_path=lambda record: store.pinned(record.sha256),
        tracer=tracer_provider.get_tracer("ortserve.scheduler") if tracer_provider else None,
        in_flight=in_flight,
    )
    metrics.watch_pool(pool)
    health = Health(pool, SERVICE_NAMES)
    control = ControlPlane(
        registry,
        pool,
        load_on_start=config.load_on_start,
        poll_interval_s=config.poll_interval_s,
        on_change=health.update_models,
        on_poll_failure=metrics.poll_failed,
        listen_url=listen_url(engine) if config.listen_for_changes else None,
        max_jobs=config.max_toolkit_jobs,
    )
    core = InferenceCore(
        pool,
        classify=lambda exc: code_of(exc).name,
        shadow_observer=metrics.shadow,
        max_request_bytes=config.max_request_bytes or config.max_message_bytes,
        shared_memory_key_prefix=config.shared_memory_key_prefix,
    )
    failures_log = BoundedLog(structlog.get_logger("ortserve.rpc").warning)
    failures = Failures(metrics.stream_message_failed, failures_log)
    rpc = RpcInterceptor(metrics, failures, auth, _rpc_tracing(tracer_provider), in_flight)
    server = aio.server(
        handlers=[rpc],
        interceptors=soak_leak.interceptors() or None,
        options=server_options(config),
        maximum_concurrent_rpcs=config.max_concurrent_rpcs or None,
    )
    # Every service registers through the interceptor (it stands in for the server), never unwrapped.
    services: Any = rpc.registrar()
    ipb_grpc.add_InferenceServiceServicer_to_server(InferenceServicer(core, failures), services)
    rpb_grpc.add_RegistryServiceServicer_to_server(RegistryServicer(control, core), services)
    oip_grpc.add_GRPCInferenceServiceServicer_to_server(OipServicer(core, control, failures), services)
    _add_health_and_reflection(services, health, config)
    return Components(config, server, control, core, health, metrics, executor, tracer_provider, auth)


def server_options(config: ServerConfig) -> list[tuple[str, int]]:
    """gRPC channel arguments: message size, streams per connection, keepalive and its enforcement,
    connection idle time and age; the optional ones are left at gRPC's default (none) when 0."""
    options = [
        ("grpc.max_receive_message_length", config.max_message_bytes),
        ("grpc.max_send_message_length", config.max_message_bytes),
        # Refuse a port in use, except to the workers of one supervisor (server/workers.py).
        ("grpc.so_reuseport", int(config.workers > 1)),
        ("grpc.keepalive_time_ms", config.keepalive_time_ms),
        ("grpc.keepalive_timeout_ms", config.keepalive_timeout_ms),
        ("grpc.http2.min_ping_interval_without_data_ms", config.min_ping_interval_without_data_ms),
        ("grpc.http2.max_ping_strikes", config.max_ping_strikes),
        ("grpc.keepalive_permit_without_calls", int(config.keepalive_permit_without_calls)),
    ]
    optional = (
        ("grpc.max_concurrent_streams", config.max_concurrent_streams),
        ("grpc.max_connection_idle_ms", config.max_connection_idle_ms),
        ("grpc.max_connection_age_ms", config.max_connection_age_ms),
        ("grpc.max_connection_age_grace_ms", config.max_connection_age_grace_ms),
    )
    options.extend((name, value) for name, value in optional if value > 0)
    return options


def _otlp_provider(config: ServerConfig) -> Any:
    if not config.otlp_endpoint:
        return None
    from ortserve.server.tracing import otlp_provider

    return otlp_provider(config.otlp_endpoint, config.tracing_service_name)


def _rpc_tracing(tracer_provider: Any) -> Any:
    if tracer_provider is None:
        return None
    from ortserve.server.tracing import RpcTracing

    return RpcTracing(tracer_provider.get_tracer("ortserve.rpc"))


def build_http(parts: Components) -> HttpServer:
    """The HTTP port: /metrics, and the console over the same control plane and tokens when enabled."""
    config = parts.config
    console = None
    if config.console:
        shadows = parts.core.shadows
        console = Console(parts.control, shadows, parts.metrics, parts.auth, actions=config.console_actions)
    return HttpServer(parts.metrics.registry, console)


def _auth(config: ServerConfig) -> TokenAuth | None:
    if not config.auth_enabled:
        return None
    return TokenAuth(config.infer_tokens, config.admin_tokens, reflection_public=config.reflection_public)


def server_credentials(config: ServerConfig) -> grpc.ServerCredentials | None:
    """TLS (mutual when a client CA is configured), or None for plaintext."""
    if not config.tls_cert_file:
        return None
    key = Path(config.tls_key_file).read_bytes()
    cert = Path(config.tls_cert_file).read_bytes()
    client_ca = Path(config.tls_client_ca_file).read_bytes() if config.tls_client_ca_file else None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _add_health_and_reflection(server: Registrar, health: Health, config: ServerConfig) -> None:
    from grpc_health.v1 import health_pb2_grpc

    health_pb2_grpc.add_HealthServicer_to_server(health.servicer, server)
    if config.reflection:
        from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

        # The asyncio servicer, named: enable_server_reflection picks it only for an aio.Server.
        names = (*SERVICE_NAMES, "grpc.health.v1.Health", reflection.SERVICE_NAME)
        reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
            reflection.aio.ReflectionServicer(names), server
        )


__all__ = ["Components", "build_http", "build_server"]
