"""Channel behaviour against fake servers: retries, round robin, TLS, mutual TLS and tokens."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.client import AsyncClient, Client, RetryPolicy
from ortserve.client.channel import build_target, service_config
from ortserve.client.client import to_tensor


@dataclass
class Fake(ipb_grpc.InferenceServiceServicer):
    """Predict echoes its input; the first `fail` calls end UNAVAILABLE. Records every attempt."""

    name: str
    fail: int = 0
    attempts: list[dict[str, str]] = field(default_factory=list)

    async def Predict(  # type: ignore[override]
        self, request: ipb.PredictRequest, context: aio.ServicerContext
    ) -> ipb.PredictResponse:
        self.attempts.append({k: v for k, v in context.invocation_metadata() or ()})  # type: ignore[misc]
        if len(self.attempts) <= self.fail:
            await context.abort(grpc.StatusCode.UNAVAILABLE, f"{self.name} is busy")
        return ipb.PredictResponse(model=self.name, model_version=7, outputs=list(request.inputs))


async def start_fake(fake: Fake, credentials: grpc.ServerCredentials | None = None) -> tuple[aio.Server, int]:
    server = aio.server()
    ipb_grpc.add_InferenceServiceServicer_to_server(fake, server)
    if credentials is None:
        port = server.add_insecure_port("127.0.0.1:0")
    else:
        port = server.add_secure_port("127.0.0.1:0", credentials)
    await server.start()
    return server, port


@pytest.fixture
async def fakes() -> AsyncIterator[list[tuple[Fake, int]]]:
    started = []
    for name in ("a", "b"):
        fake = Fake(name)
        server, port = await start_fake(fake)
        started.append((fake, server, port))
    yield [(fake, port) for fake, _, port in started]
    for _, server, _ in started:
        await server.stop(0)


X = {"x": np.arange(6, dtype=np.float32).reshape(2, 3)}


async def test_retries_on_unavailable_with_backoff() -> None:
    fake = Fake("flaky", fail=2)
    server, port = await start_fake(fake)
    try:
        policy = RetryPolicy(max_attempts=3, initial_backoff_s=0.01, max_backoff_s=0.05)
        async with AsyncClient(f"127.0.0.1:{port}", retry=policy) as client:
            result = await client.predict("m", X)
        np.testing.assert_array_equal(result.outputs["x"], X["x"])
        assert len(fake.attempts) == 3
        # gRPC numbers the attempts it retried.
        assert [a.get("grpc-previous-rpc-attempts") for a in fake.attempts] == [None, "1", "2"]

        fake.attempts.clear()
        fake.fail = 5
        with Client(f"127.0.0.1:{port}", retry=policy) as sync_client, pytest.raises(grpc.RpcError) as info:
            await asyncio.to_thread(sync_client.predict, "m", X)
        assert info.value.code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        assert len(fake.attempts) == 3  # max_attempts, then the last error

        fake.attempts.clear()
        async with AsyncClient(f"127.0.0.1:{port}", retry=None) as plain:
            with pytest.raises(aio.AioRpcError):
                await plain.predict("m", X)
        assert len(fake.attempts) == 1
    finally:
        await server.stop(0)


async def test_round_robin_over_addresses(fakes: list[tuple[Fake, int]]) -> None:
    addresses = [f"127.0.0.1:{port}" for _, port in fakes]
    async with AsyncClient(addresses) as client:
        await client.wait_ready(10)
        served = [(await client.predict("m", X)).model for _ in range(20)]
    assert set(served) == {"a", "b"} and served.count("a") >= 5, served
    with Client(",".join(addresses)) as sync_client:
        served = [(await asyncio.to_thread(sync_client.predict, "m", X)).model for _ in range(10)]
    assert set(served) == {"a", "b"}, served


async def test_failover_to_the_live_address(fakes: list[tuple[Fake, int]]) -> None:
    dead = 1  # nothing listens on port 1
    async with AsyncClient([f"127.0.0.1:{dead}", f"127.0.0.1:{fakes[0][1]}"]) as client:
        assert {(await client.predict("m", X)).model for _ in range(10)} == {"a"}


async def test_token_on_plaintext(fakes: list[tuple[Fake, int]]) -> None:
    fake, port = fakes[0]
    async with AsyncClient(f"127.0.0.1:{port}", token="s3cret", metadata=[("x-team", "sdk")]) as client:
        await client.predict("m", X)
    with Client(f"127.0.0.1:{port}", token="s3cret") as sync_client:
        await asyncio.to_thread(sync_client.predict, "m", X)
    assert [a["authorization"] for a in fake.attempts] == ["Bearer s3cret"] * 2
    assert fake.attempts[0]["x-team"] == "sdk"


async def test_tls_mutual_tls_and_token(pki: Path) -> None:
    key, cert, ca = (
        (pki / "server.key").read_bytes(),
        (pki / "server.pem").read_bytes(),
        (pki / "ca.pem").read_bytes(),
    )
    fake = Fake("tls")
    server, port = await start_fake(fake, grpc.ssl_server_credentials([(key, cert)]))
    mtls_fake = Fake("mtls")
    mtls_server, mtls_port = await start_fake(
        mtls_fake, grpc.ssl_server_credentials([(key, cert)], root_certificates=ca, require_client_auth=True)
    )
    try:
        # Root certificates as a path, the token as call credentials over TLS.
        async with AsyncClient(
            f"127.0.0.1:{port}", root_certificates=str(pki / "ca.pem"), token="t0k"
        ) as client:
            assert (await client.predict("m", X)).model == "tls"
        assert fake.attempts[-1]["authorization"] == "Bearer t0k"
        # A host name checked against the certificate, PEM bytes.
        with Client(f"localhost:{port}", tls=True, root_certificates=ca, token="t1") as sync_client:
            assert (await asyncio.to_thread(sync_client.predict, "m", X)).model == "tls"
        assert fake.attempts[-1]["authorization"] == "Bearer t1"
        # Without the CA the server is not trusted.
        async with AsyncClient(f"127.0.0.1:{port}", tls=True, retry=None, timeout=5) as untrusted:
            with pytest.raises(aio.AioRpcError) as info:
                await untrusted.predict("m", X)
            assert info.value.code() == grpc.StatusCode.UNAVAILABLE

        async with AsyncClient(
            f"127.0.0.1:{mtls_port}",
            root_certificates=ca,
            certificate_chain=pki / "client.pem",
            private_key=(pki / "client.key").read_text(),
        ) as mtls:
            assert (await mtls.predict("m", X)).model == "mtls"
        async with AsyncClient(
            f"127.0.0.1:{mtls_port}", root_certificates=ca, retry=None, timeout=5
        ) as no_cert:
            with pytest.raises(aio.AioRpcError):
                await no_cert.predict("m", X)
    finally:
        await server.stop(0)
        await mtls_server.stop(0)


def test_targets_and_service_config() -> None:
    assert build_target("127.0.0.1:1") == ("127.0.0.1:1", None)
    assert build_target("dns:///example.com:443") == ("dns:///example.com:443", None)
    assert build_target(["127.0.0.1:1", "127.0.0.2:2"]) == ("ipv4:127.0.0.1:1,127.0.0.2:2", None)
    assert build_target("127.0.0.1:1, 127.0.0.1:2") == ("ipv4:127.0.0.1:1,127.0.0.1:2", None)
    assert build_target(["[::1]:1", "[::1]:2"]) == ("ipv6:[::1]:1,[::1]:2", None)
    assert build_target(["localhost:1", "127.0.0.1:2"]) == ("ipv4:127.0.0.1:1,127.0.0.1:2", "localhost:1")
    with pytest.raises(ValueError, match="mix"):
        build_target(["127.0.0.1:1", "[::1]:2"])
    with pytest.raises(ValueError):
        build_target([])
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=9)
    with pytest.raises(ValueError):
        RetryPolicy(retryable_codes=("NOPE",))
    with pytest.raises(ValueError, match="together"):
        Client("127.0.0.1:1", certificate_chain=b"x")

    config = json.loads(service_config(RetryPolicy()))
    assert config["loadBalancingConfig"] == [{"round_robin": {}}]
    idempotent, registry = config["methodConfig"]
    assert idempotent["retryPolicy"] == {
        "maxAttempts": 5,
        "initialBackoff": "0.05s",
        "maxBackoff": "1s",
        "backoffMultiplier": 2.0,
        "retryableStatusCodes": ["UNAVAILABLE", "CANCELLED"],
    }
    assert {"service": "ortserve.api.v1.InferenceService"} in idempotent["name"]
    assert registry == {
        "name": [{"service": "ortserve.api.v1.RegistryService"}],
        "retryPolicy": {**idempotent["retryPolicy"], "retryableStatusCodes": ["UNAVAILABLE"]},
    }
    assert "methodConfig" not in json.loads(service_config(None))
    assert "healthCheckConfig" in json.loads(service_config(None, health_check=True))
    assert to_tensor("x", X["x"]).shape == [2, 3]


def test_a_replica_that_comes_back_rejoins_within_seconds() -> None:
    from ortserve.client.channel import plan_channel

    plan = plan_channel(
        ["127.0.0.1:1", "127.0.0.1:2"],
        tls=False,
        root_certificates=None,
        certificate_chain=None,
        private_key=None,
        server_name=None,
        token=None,
        metadata=(),
        retry=RetryPolicy(),
        health_check=False,
        max_message_bytes=1 << 20,
        options=(),
    )
    assert ("grpc.max_reconnect_backoff_ms", 5000) in plan.options  # gRPC's default is 120 s
