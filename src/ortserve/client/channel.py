"""Channel settings shared by `Client` and `AsyncClient`: targets, round robin, retries, TLS, tokens.

Several addresses become one channel with a static target list (`ipv4:10.0.0.1:8001,10.0.0.2:8001`)
and the `round_robin` load-balancing policy, so consecutive calls go to different servers and a
server that goes away (connection refused or closed, GOAWAY) drops out of the rotation. The gRPC
service config adds a `retryPolicy` for UNAVAILABLE with exponential backoff to every method of
both services, so a call that lands on a server that is shutting down is retried on another one.
"""

from __future__ import annotations

import ipaddress
import json
import os
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import grpc.aio

INFERENCE_SERVICE = "ortserve.api.v1.InferenceService"
REGISTRY_SERVICE = "ortserve.api.v1.RegistryService"
# Registry methods that change nothing; every inference method is also safe to repeat.
REGISTRY_READS = ("GetModel", "ListModels", "ListModelVersions", "GetModelVersion")
MAX_MESSAGE_BYTES = 256 << 20
DEFAULT_ADDRESS = "127.0.0.1:8001"

# PEM bytes, PEM text (starting with "-----BEGIN"), or the path of a PEM file.
PemSource = bytes | str | os.PathLike[str]


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """gRPC retry policy of every call (the service config's `retryPolicy`).

    Every method is retried on `retryable_codes`; the methods that are safe to repeat (every
    inference method and the registry reads) also on `idempotent_codes`: a server that stops with
    calls in flight ends some of them with CANCELLED rather than UNAVAILABLE. A call cancelled by
    the client itself or past its deadline is never retried. gRPC caps `max_attempts` at 5.
    A call is retried only while its request fits in `buffer_bytes` and no response message has
    arrived yet; the call's deadline covers all attempts.
    """

    max_attempts: int = 5
    initial_backoff_s: float = 0.05
    max_backoff_s: float = 1.0
    backoff_multiplier: float = 2.0
    retryable_codes: tuple[str, ...] = ("UNAVAILABLE",)
    idempotent_codes: tuple[str, ...] = ("CANCELLED",)
    buffer_bytes: int = 64 << 20

    def __post_init__(self) -> None:
        if not 2 <= self.max_attempts <= 5:
            raise ValueError(f"max_attempts must be in 2..5, got {self.max_attempts}")
        if self.initial_backoff_s <= 0 or self.max_backoff_s <= 0 or self.backoff_multiplier <= 0:
            raise ValueError("initial_backoff_s, max_backoff_s and backoff_multiplier must be > 0")
        valid = set(grpc.StatusCode.__members__)
        for code in (*self.retryable_codes, *self.idempotent_codes):
            if code not in valid or code == "OK":
                raise ValueError(f"not a retryable gRPC status code name: {code!r}")


MAX_RECONNECT_BACKOFF_MS = 5000


def service_config(retry: RetryPolicy | None, health_check: bool = False) -> str:
    """The JSON service config: round robin, the retry policy, optionally client-side health checks."""
    config: dict[str, Any] = {"loadBalancingConfig": [{"round_robin": {}}]}
    if health_check:
        # Subchannels whose server reports NOT_SERVING on grpc.health.v1.Health/Watch (a server
        # draining before it stops) leave the rotation before their connection closes. A server
        # whose Watch fails with anything but UNIMPLEMENTED is never picked.
        config["healthCheckConfig"] = {"serviceName": ""}
    if retry is not None:

        def policy(codes: tuple[str, ...]) -> dict[str, Any]:
            return {
                "maxAttempts": retry.max_attempts,
                "initialBackoff": _duration(retry.initial_backoff_s),
                "maxBackoff": _duration(retry.max_backoff_s),
                "backoffMultiplier": retry.backoff_multiplier,
                "retryableStatusCodes": list(dict.fromkeys(codes)),
            }

        idempotent = [{"service": INFERENCE_SERVICE}] + [
            {"service": REGISTRY_SERVICE, "method": m} for m in REGISTRY_READS
        ]
        config["methodConfig"] = [
            # The most specific name wins: service/method, then service.
            {"name": idempotent, "retryPolicy": policy((*retry.retryable_codes, *retry.idempotent_codes))},
            {"name": [{"service": REGISTRY_SERVICE}], "retryPolicy": policy(retry.retryable_codes)},
        ]
    return json.dumps(config)


def _duration(seconds: float) -> str:
    return f"{seconds:.9f}".rstrip("0").rstrip(".") + "s"


def split_host_port(address: str) -> tuple[str, int]:
    """`host:port` or `[v6]:port` → (host, port)."""
    host, sep, port = address.rpartition(":")
    if not sep or not host or not (port.isascii() and port.isdigit()):
        raise ValueError(f"address must be HOST:PORT, got {address!r}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return host, int(port)


def build_target(addresses: str | Sequence[str]) -> tuple[str, str | None]:
    """The channel target for one or more addresses, and the authority to present (or None).

    One address is used as is (any gRPC target: `host:port`, `dns:///host:port`, `unix:path`).
    Several addresses (a sequence, or one string with commas) must be `host:port`; host names are
    resolved once here, and all must be of one IP family, since a static gRPC target list is
    either `ipv4:` or `ipv6:`. The authority is the first host name, so TLS still checks it.
    """
    items = [addresses] if isinstance(addresses, str) else list(addresses)
    items = [part.strip() for item in items for part in item.split(",") if part.strip()]
    if not items:
        raise ValueError("no server address given")
    if len(items) == 1:
        return items[0], None
    v4: list[str] = []
    v6: list[str] = []
    authority: str | None = None
    for item in items:
        host, port = split_host_port(item)
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            authority = authority or f"{host}:{port}"
            ip = ipaddress.ip_address(socket.getaddrinfo(host, port, proto=socket.IPPROTO_TCP)[0][4][0])
        if ip.version == 4:
            v4.append(f"{ip}:{port}")
        else:
            v6.append(f"[{ip}]:{port}")
    if v4 and v6:
        raise ValueError(f"addresses mix IPv4 and IPv6, which one gRPC target cannot: {items}")
    return ("ipv4:" + ",".join(v4)) if v4 else ("ipv6:" + ",".join(v6)), authority


def _pem(source: PemSource | None) -> bytes | None:
    if source is None:
        return None
    if isinstance(source, bytes):
        return source
    if isinstance(source, str) and source.lstrip().startswith("-----BEGIN"):
        return source.encode()
    return Path(source).read_bytes()


@dataclass(frozen=True, slots=True)
class ChannelPlan:
    """What both clients pass to grpc(.aio).secure_channel / insecure_channel."""

    target: str
    options: list[tuple[str, Any]]
    credentials: grpc.ChannelCredentials | None  # None: plaintext
    metadata: tuple[tuple[str, str], ...]  # sent with every call

    def blocking(self) -> grpc.Channel:
        """The plan as a blocking (non-asyncio) channel."""
        if self.credentials is None:
            return grpc.insecure_channel(self.target, options=self.options)
        return grpc.secure_channel(self.target, self.credentials, options=self.options)

    def asyncio(self) -> grpc.aio.Channel:
        """The plan as a grpc.aio channel."""
        if self.credentials is None:
            return grpc.aio.insecure_channel(self.target, options=self.options)
        return grpc.aio.secure_channel(self.target, self.credentials, options=self.options)


def plan_channel(
    addresses: str | Sequence[str],
    *,
    tls: bool,
    root_certificates: PemSource | None,
    certificate_chain: PemSource | None,
    private_key: PemSource | None,
    server_name: str | None,
    token: str | None,
    metadata: Sequence[tuple[str, str]],
    retry: RetryPolicy | None,
    health_check: bool,
    max_message_bytes: int,
    options: Sequence[tuple[str, Any]],
) -> ChannelPlan:
    target, authority = build_target(addresses)
    secure = tls or root_certificates is not None or certificate_chain is not None
    if (certificate_chain is None) != (private_key is None):
        raise ValueError("certificate_chain and private_key go together (mutual TLS)")
    opts: list[tuple[str, Any]] = [
        ("grpc.max_send_message_length", max_message_bytes),
        ("grpc.max_receive_message_length", max_message_bytes),
        ("grpc.lb_policy_name", "round_robin"),
        ("grpc.service_config", service_config(retry, health_check)),
        ("grpc.service_config_disable_resolution", 1),
        ("grpc.enable_retries", 1 if retry is not None else 0),
        # A replica that comes back rejoins the round robin within 5 s, not after gRPC's default
        # reconnect backoff of up to 120 s (calls meanwhile go to the other replicas).
        ("grpc.max_reconnect_backoff_ms", MAX_RECONNECT_BACKOFF_MS),
    ]
    if retry is not None:
        opts.append(("grpc.per_rpc_retry_buffer_size", retry.buffer_bytes))
    if server_name is not None:
        if secure:
            opts.append(("grpc.ssl_target_name_override", server_name))
        opts.append(("grpc.default_authority", server_name))
    elif authority is not None:
        opts.append(("grpc.default_authority", authority))
    opts.extend(options)

    credentials: grpc.ChannelCredentials | None = None
    call_metadata = list(metadata)
    if secure:
        credentials = grpc.ssl_channel_credentials(
            root_certificates=_pem(root_certificates),
            private_key=_pem(private_key),
            certificate_chain=_pem(certificate_chain),
        )
        if token is not None:
            # Call credentials: gRPC attaches them only on secure channels.
            credentials = grpc.composite_channel_credentials(
                credentials, grpc.access_token_call_credentials(token)
            )
    elif token is not None:
        # gRPC refuses call credentials on a plaintext channel; send the header ourselves.
        call_metadata.append(("authorization", f"Bearer {token}"))
    return ChannelPlan(target, opts, credentials, tuple(call_metadata))
