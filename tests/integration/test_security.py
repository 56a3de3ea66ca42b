"""TLS, mutual TLS and bearer tokens on a real ortserve, through the SDK."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio
from grpc_health.v1 import health_pb2, health_pb2_grpc

from ortserve.client import AsyncClient
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models

X = {"x": np.ones((1, 16), np.float32)}


async def started(tmp_path: Path, **config: object) -> OrtServer:
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), **config))  # type: ignore[arg-type]
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path)
    server.parts.control.registry.register_file(path, "linear")
    await server.start()
    return server


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[str]:
    server = await started(tmp_path, infer_tokens=("reader",), admin_tokens=("boss",))
    yield f"127.0.0.1:{server.port}"
    await server.stop(0)


async def code_of(call: object) -> grpc.StatusCode:
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    return info.value.code()


async def test_tokens_and_scopes(guarded: str, tmp_path: Path) -> None:
    model = tmp_path / "m.onnx"
    onnx_models.linear(model, seed=4)
    async with AsyncClient(guarded, retry=None) as anonymous:
        assert await code_of(anonymous.predict("linear", X)) == grpc.StatusCode.UNAUTHENTICATED
    async with AsyncClient(guarded, retry=None, token="wrong") as wrong:
        assert await code_of(wrong.list_models()) == grpc.StatusCode.UNAUTHENTICATED
    async with AsyncClient(guarded, retry=None, token="reader") as reader:
        assert (await reader.predict("linear", X)).version == 1
        assert [m.name for m in await reader.list_models()] == ["linear"]
        assert await code_of(reader.register(model, "linear")) == grpc.StatusCode.PERMISSION_DENIED
        assert await code_of(reader.promote("linear", 1)) == grpc.StatusCode.PERMISSION_DENIED
    async with AsyncClient(guarded, retry=None, token="boss") as admin:
        assert (await admin.register(model, "linear")).version == 2
        assert (await admin.predict("linear", X)).version == 2
    async with aio.insecure_channel(guarded) as channel:  # health needs no token
        health = health_pb2_grpc.HealthStub(channel)
        reply = await health.Check(health_pb2.HealthCheckRequest(service="linear"))
        assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_tls_and_mutual_tls(tmp_path: Path, pki: Path) -> None:
    tls = await started(
        tmp_path / "tls", tls_cert_file=str(pki / "server.pem"), tls_key_file=str(pki / "server.key")
    )
    mutual = await started(
        tmp_path / "mtls",
        tls_cert_file=str(pki / "server.pem"),
        tls_key_file=str(pki / "server.key"),
        tls_client_ca_file=str(pki / "ca.pem"),
    )
    try:
        async with AsyncClient(f"localhost:{tls.port}", root_certificates=str(pki / "ca.pem")) as client:
            assert (await client.predict("linear", X)).version == 1
        async with AsyncClient(f"127.0.0.1:{tls.port}", retry=None, timeout=5) as plaintext:
            assert await code_of(plaintext.predict("linear", X)) == grpc.StatusCode.UNAVAILABLE
        client_cert = {
            "root_certificates": str(pki / "ca.pem"),
            "certificate_chain": str(pki / "client.pem"),
            "private_key": str(pki / "client.key"),
        }
        async with AsyncClient(f"127.0.0.1:{mutual.port}", **client_cert) as client:  # type: ignore[arg-type]
            assert (await client.predict("linear", X)).version == 1
        async with AsyncClient(
            f"127.0.0.1:{mutual.port}", root_certificates=str(pki / "ca.pem"), retry=None, timeout=5
        ) as no_cert:
            assert await code_of(no_cert.predict("linear", X)) == grpc.StatusCode.UNAVAILABLE
    finally:
        await asyncio.gather(tls.stop(0), mutual.stop(0))
