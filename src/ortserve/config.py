"""Server configuration: defaults < TOML file < ORTSERVE_* environment < CLI flags.

Settings are frozen dataclasses validated at start with messages that name the value.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

from ortserve.errors import InvalidInput
from ortserve.provider_specs import format_spec, parse_spec, parse_spec_list
from ortserve.records import ProviderSpec

ENV_PREFIX = "ORTSERVE_"
MiB = 1 << 20
_INT32 = 2**31 - 1
_USER_PASSWORD = re.compile(r"^([^:/]+://[^:/@]*:)[^@]*@")
# Provider specs (ortserve.provider_specs): a list in TOML, `;`-separated in the environment and flags.
ProviderList = tuple[str, ...]


# Settings that must lie in a closed range.
_RANGES: dict[str, tuple[float, float]] = {
    "port": (0, 65535),
    "metrics_port": (0, 65535),
    "workers": (1, 256),
    "poll_interval_s": (0.05, 3600),
    "gil_switch_interval_us": (50, 100_000),
    # Overload limits and connection management (gRPC channel arguments are 32-bit).
    "max_concurrent_rpcs": (0, _INT32),
    "max_concurrent_streams": (0, _INT32),
    "max_request_bytes": (0, 2**40),
    "keepalive_time_ms": (1000, _INT32),
    "keepalive_timeout_ms": (1000, _INT32),
    "min_ping_interval_without_data_ms": (0, _INT32),
    "max_ping_strikes": (0, _INT32),
    "max_connection_idle_ms": (0, _INT32),
    "max_connection_age_ms": (0, _INT32),
    "max_connection_age_grace_ms": (0, _INT32),
    "blob_cache_bytes": (0, 2**60),
    "optimized_model_cache_bytes": (0, 2**60),
    "max_toolkit_jobs": (1, 64),
    "toolkit_timeout_s": (1, 86_400),
    "toolkit_memory_bytes": (0, 2**50),
}


@dataclass(frozen=True, slots=True, kw_only=True)
class ServerConfig:
    """Everything `ortserve serve` needs; units are in the names."""

    host: str = "127.0.0.1"
    port: int = 8001
    metrics_port: int = 8002
    data_dir: str = "./ortserve-data"
    # SQLAlchemy URL; empty: SQLite at <data_dir>/registry.db.
    db: str = ""
    max_message_bytes: int = 256 * MiB
    max_model_bytes: int = 2048 * MiB
    grace_period_s: float = 5.0
    log_level: str = "info"
    # "auto": JSON when stderr is not a terminal.
    log_format: str = "auto"
    # OpenTelemetry tracing (the `otel` extra): spans are exported over OTLP/gRPC to this endpoint,
    # e.g. http://otel-collector:4317; empty: tracing off, nothing on the hot path.
    otlp_endpoint: str = ""
    tracing_service_name: str = "ortserve"
    # Execution providers tried in order when a version names none, with their options:
    # "CUDAExecutionProvider:device_id=0,gpu_mem_limit=2147483648" or a short name ("cuda", "cpu").
    providers: ProviderList = ("CPUExecutionProvider",)
    # Fail a load when a preferred provider is unavailable instead of recording the fallback.
    strict_providers: bool = False
    # ONNX Runtime intra-op threads per session; 0: (cores - 1) / the version's
    # max_concurrent_batches, at least 1: one core stays with the event loop.
    intra_op_threads: int = 0
    # Keep ONNX Runtime's optimized graph of each loaded model under <data_dir>/ort-cache, so a restart
    # loads it without redoing graph optimization (keyed by the model, its session settings, ONNX
    # Runtime's version, the providers with their options, the custom operator libraries and the CPU).
    optimized_model_cache: bool = True
    # Least recently used optimized models out above this size; 0: no limit.
    optimized_model_cache_bytes: int = 1024 * MiB
    # Shared libraries of custom ONNX Runtime operators, registered on every session and in the
    # validation subprocess; each must exist and load, or the server does not start.
    custom_op_libraries: tuple[str, ...] = ()
    # The operator domains custom_op_libraries provide (ONNX Runtime cannot list them): models may
    # use operators of these domains besides the standard ones.
    custom_op_domains: tuple[str, ...] = ()
    # onnxruntime-extensions (the `extensions` extra), when installed: its library is registered like
    # custom_op_libraries and its domain ai.onnx.contrib allowed. Without the package: nothing.
    onnxruntime_extensions: bool = True
    # Derivations (models optimize/quantize/fp16) and operator profiles running at once on this
    # server, each in a limited subprocess of up to 4 GiB plus three times the model; more are
    # refused with RESOURCE_EXHAUSTED.
    max_toolkit_jobs: int = 2
    # Limits of each such subprocess: wall time (its CPU time may reach this on every core), and
    # address space (0: 4 GiB plus three times the model's size).
    toolkit_timeout_s: float = 600.0
    toolkit_memory_bytes: int = 0
    # Threads for warm-ups; 0: the machine's cores. Each loaded version also runs its batches on
    # threads of its own, one per batch it may run at once (max_concurrent_batches).
    executor_threads: int = 0
    # Load what aliases and traffic policies use, and each model's latest version, at start and
    # whenever the registry changes; other versions load on demand.
    load_on_start: bool = True
    # How often each server polls the registry revision to converge with other replicas.
    poll_interval_s: float = 1.0
    # On PostgreSQL, also LISTEN for change notifications and refresh at once (polling stays the
    # fallback). Turn off behind a pooler that does not support LISTEN (PgBouncer in transaction mode).
    listen_for_changes: bool = True
    # Batches expected to compute in less than this run on the event loop (no thread hop); 0: never.
    inline_compute_us: int = 100
    # Python's switch interval (process-wide): how long the event loop may keep the GIL while a
    # thread that finished a batch waits for it to hand back results. Python's default is 5000.
    gil_switch_interval_us: int = 100
    # Evict unreferenced versions, least recently used first, above this much memory; 0: no limit.
    memory_budget_bytes: int = 0
    # Register the example models when the registry is empty.
    examples: bool = False
    reflection: bool = True
    # With tokens configured, reflection needs the infer scope unless this is set.
    reflection_public: bool = False
    # TLS: PEM files; with tls_client_ca_file clients must present a certificate (mutual TLS).
    tls_cert_file: str = ""
    tls_key_file: str = ""
    tls_client_ca_file: str = ""
    # Bearer tokens; when any is set every RPC but health needs one. Each entry is a secret, or
    # NAME:sha256:HEX (`ortserve token hash`) so the file holds no secret; the audit log records
    # the name of the token that made a change.
    infer_tokens: tuple[str, ...] = ()
    admin_tokens: tuple[str, ...] = ()
    # RPCs handled at once, streams included; more are refused with RESOURCE_EXHAUSTED; 0: no limit.
    max_concurrent_rpcs: int = 0
    # RPCs one connection may have open at once (HTTP/2 SETTINGS; clients queue the rest); 0: no limit.
    max_concurrent_streams: int = 0
    # Input tensor bytes of one inference request (RESOURCE_EXHAUSTED above); 0: max_message_bytes.
    # System shared memory (OIP extension): callers may open only /dev/shm objects whose key starts
    # with this ("/" allows every object the server's user can open).
    shared_memory_key_prefix: str = "/ortserve-"
    max_request_bytes: int = 0
    # Ping a client after this long without activity on a connection with calls, to find dead peers.
    keepalive_time_ms: int = 60_000
    # Close the connection when a keepalive ping is not answered within this.
    keepalive_timeout_ms: int = 20_000
    # Client pings closer than this while no data flows count a strike; past max_ping_strikes: GOAWAY.
    min_ping_interval_without_data_ms: int = 10_000
    # Strikes (too frequent client pings) before GOAWAY too_many_pings; 0: never close for pings.
    max_ping_strikes: int = 2
    # Accept client pings on connections without calls (otherwise each one counts a strike).
    keepalive_permit_without_calls: bool = False
    # Close a connection without calls after this long (GOAWAY; clients reconnect on use); 0: never.
    max_connection_idle_ms: int = 300_000
    # Close every connection after this long, to rebalance long-lived clients; 0: never.
    max_connection_age_ms: int = 0
    # After max_connection_age_ms, calls still running get this long before the close; 0: unlimited.
    max_connection_age_grace_ms: int = 0
    # Register at start what this folder holds (a model.onnx, or <name>/<version>/model.onnx with
    # Triton's config.pbtxt): files already registered are skipped, new ones become new versions.
    model_dir: str = ""
    # The name of model_dir's single model.onnx; empty: the folder's name.
    model_name: str = ""
    # Where model bytes live: file://PATH or s3://BUCKET/PREFIX (any S3-compatible store); empty:
    # file://<data_dir>/store. Credentials for S3 come the standard way (AWS_* variables, a profile, a role).
    store_url: str = ""
    # This replica's local copies of an s3:// store's blobs, under <data_dir>/blob-cache; least
    # recently used out above this size; 0: no limit.
    blob_cache_bytes: int = 10240 * MiB
    # S3 endpoint (MinIO, Ceph, R2, a local server) and region; empty: AWS_ENDPOINT_URL, AWS_REGION or AWS's.
    s3_endpoint_url: str = ""
    s3_region: str = ""
    # The web console at / on the metrics port (metrics stay at /metrics).
    console: bool = True
    # Let the console promote, roll back, set traffic and shadow, and retire without tokens configured
    # (then anyone who reaches the metrics port may); with tokens, its actions need an admin token.
    console_actions: bool = False
    # Server processes sharing the gRPC port (SO_REUSEPORT) under one supervisor that restarts them
    # and serves all their metrics on metrics_port; each holds its own sessions (memory per worker).
    workers: int = 1

    def __post_init__(self) -> None:
        _check_prefix("shared_memory_key_prefix", self.shared_memory_key_prefix)
        for name, (low, high) in _RANGES.items():
            value = getattr(self, name)
            if not low <= value <= high:
                raise InvalidInput(f"{name} must be in {low}..{high}, got {value}")
        if self.max_message_bytes < MiB or self.max_message_bytes > 2047 * MiB:
            raise InvalidInput(f"max_message_bytes must be in 1 MiB..2047 MiB, got {self.max_message_bytes}")
        if self.log_level not in ("debug", "info", "warning", "error"):
            raise InvalidInput(f"log_level must be debug, info, warning or error, got {self.log_level!r}")
        if self.log_format not in ("auto", "json", "console"):
            raise InvalidInput(f"log_format must be auto, json or console, got {self.log_format!r}")
        if self.memory_budget_bytes < 0:
            raise InvalidInput(f"memory_budget_bytes must be >= 0, got {self.memory_budget_bytes}")
        if not (math.isfinite(self.grace_period_s) and self.grace_period_s >= 0):
            raise InvalidInput(f"grace_period_s must be a finite number >= 0, got {self.grace_period_s}")
        if not self.providers:
            raise InvalidInput("providers must name at least one execution provider")
        _parse_providers(self.providers)  # a spec's syntax error stops the start
        for name in ("intra_op_threads", "executor_threads"):
            if getattr(self, name) < 0:
                raise InvalidInput(f"{name} must be >= 0, got {getattr(self, name)}")
        _check_custom_op_domains(self.custom_op_domains, self.custom_op_libraries)
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise InvalidInput("tls_cert_file and tls_key_file must be set together")
        if self.tls_client_ca_file and not self.tls_cert_file:
            raise InvalidInput("tls_client_ca_file (mutual TLS) needs tls_cert_file and tls_key_file")

    @property
    def auth_enabled(self) -> bool:
        return bool(self.infer_tokens or self.admin_tokens)

    @property
    def db_url(self) -> str:
        return self.db or f"sqlite:///{Path(self.data_dir).resolve() / 'registry.db'}"

    @property
    def db_url_shown(self) -> str:
        """`db_url` for display: a password in it is replaced by ***."""
        return hide_password(self.db_url)

    @property
    def provider_specs(self) -> tuple[ProviderSpec, ...]:
        return _parse_providers(self.providers)

    @property
    def store_dir(self) -> Path:
        return Path(self.data_dir) / "store"

    @property
    def ort_cache_dir(self) -> Path:
        return Path(self.data_dir) / "ort-cache"

    def as_dict(self) -> dict[str, Any]:
        """Settings for display; tokens and the database password are masked."""
        data = dataclasses.asdict(self)
        data["db"] = hide_password(self.db)
        for key in ("infer_tokens", "admin_tokens"):
            data[key] = ["***"] * len(data[key])
        return data


def hide_password(url: str) -> str:
    """`url` with the password of its user info (scheme://user:PASSWORD@host) replaced by ***."""
    return _USER_PASSWORD.sub(r"\1***@", url, count=1)


def _parse_providers(texts: tuple[str, ...]) -> tuple[ProviderSpec, ...]:
    try:
        return tuple(parse_spec(text) for text in texts)
    except InvalidInput as exc:
        raise InvalidInput(f"providers: {exc}") from None


def _check_prefix(name: str, value: str) -> None:
    if not value.startswith("/"):
        raise InvalidInput(f"{name} must start with '/', got {value!r}")


def _check_custom_op_domains(domains: tuple[str, ...], libraries: tuple[str, ...]) -> None:
    if domains and not libraries:
        raise InvalidInput("custom_op_domains names domains of custom_op_libraries, which is empty")
    if any(not domain.strip() for domain in domains):
        raise InvalidInput(f"custom_op_domains must not hold empty names, got {list(domains)}")


def _coerce(name: str, kind: Any, value: Any) -> Any:
    if kind == "ProviderList":
        return _provider_list(name, value)
    try:
        if isinstance(value, str):
            if kind == "bool":
                if value.lower() in ("1", "true", "yes", "on"):
                    return True
                if value.lower() in ("0", "false", "no", "off"):
                    return False
                raise ValueError(value)
            if kind == "tuple[str, ...]":
                return tuple(p.strip() for p in value.split(",") if p.strip())
        if kind == "int" and not isinstance(value, bool):
            return int(value)
        if kind == "float":
            return float(value)
        if kind == "tuple[str, ...]":
            return tuple(str(v) for v in value)
        return value
    except (TypeError, ValueError):
        raise InvalidInput(f"{name}: cannot read {value!r} as {kind}") from None


def _provider_list(name: str, value: Any) -> tuple[str, ...]:
    """Provider specs in their text form, from `a;b` text or a list of specs."""
    try:
        if isinstance(value, str):
            return tuple(format_spec(spec) for spec in parse_spec_list(value))
        if isinstance(value, list | tuple) and all(isinstance(v, str) for v in value):
            return tuple(format_spec(parse_spec(v)) for v in value)
    except InvalidInput as exc:
        raise InvalidInput(f"{name}: {exc}") from None
    raise InvalidInput(f"{name}: expected provider specs (a list of strings), got {value!r}")


def load_config(
    file: str | None = None,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Any] | None = None,
) -> ServerConfig:
    """Merge the TOML `file`, ORTSERVE_* variables of `environ` and `overrides` (flags) over defaults."""
    environ = os.environ if environ is None else environ
    kinds = {f.name: f.type for f in fields(ServerConfig)}
    values: dict[str, Any] = {}
    path = file or environ.get(f"{ENV_PREFIX}CONFIG")
    if path:
        values.update(_read_toml(path, kinds))
    for name, kind in kinds.items():
        env = environ.get(ENV_PREFIX + name.upper())
        if env is not None:
            values[name] = _coerce(f"{ENV_PREFIX}{name.upper()}", kind, env)
    for name, value in (overrides or {}).items():
        if value is not None:
            values[name] = _coerce(f"--{name.replace('_', '-')}", kinds[name], value)
    return ServerConfig(**values)


def _read_toml(path: str, kinds: Mapping[str, Any]) -> dict[str, Any]:
    try:
        data = tomllib.loads(Path(path).read_text())
    except FileNotFoundError:
        raise InvalidInput(f"config file {path} does not exist") from None
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInput(f"config file {path} is not valid TOML: {exc}") from None
    table = data.get("server", data)
    unknown = sorted(set(table) - set(kinds))
    if unknown:
        raise InvalidInput(f"config file {path}: unknown setting(s) {', '.join(unknown)}")
    return {k: _coerce(f"{path}: {k}", kinds[k], v) for k, v in table.items()}
