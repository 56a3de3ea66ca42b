"""Deny by default: every RPC of every service, enumerated from the protobuf descriptors, called with
no token, an infer token and an admin token on a real server."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf.descriptor import MethodDescriptor
from grpc import aio
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2

from ortserve.api.inference import grpc_service_pb2 as oip_pb
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.client import AsyncClient
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models

DENIED = {grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED}
SERVICES = (
    ipb.DESCRIPTOR.services_by_name["InferenceService"],
    rpb.DESCRIPTOR.services_by_name["RegistryService"],
    oip_pb.DESCRIPTOR.services_by_name["GRPCInferenceService"],
    health_pb2.DESCRIPTOR.services_by_name["Health"],
    reflection_pb2.DESCRIPTOR.services_by_name["ServerReflection"],
)
# The specification, written out here on purpose rather than imported: what the infer scope may call.
INFER = {
    "ortserve.api.v1.InferenceService": {"Predict", "PredictStream", "GetModelSignature"},
    "ortserve.api.v1.RegistryService": {
        "GetModel",
        "ListModels",
        "ListModelVersions",
        "GetModelVersion",
        "WatchModels",
    },
    "inference.GRPCInferenceService": {
        "ServerLive",
        "ServerReady",
        "ModelReady",
        "ServerMetadata",
        "ModelMetadata",
        "ModelInfer",
        "ModelStreamInfer",
        "ModelConfig",
        "ModelStatistics",
        "RepositoryIndex",
        "SystemSharedMemoryRegister",
        "SystemSharedMemoryStatus",
        "SystemSharedMemoryUnregister",
    },
    "grpc.reflection.v1alpha.ServerReflection": {"ServerReflectionInfo"},
    "grpc.health.v1.Health": {"List"},  # it names every model; Check and Watch stay open for probes
}
OPEN = {"grpc.health.v1.Health"}
INFER_SECRET, ADMIN_SECRET = "reader-secret", "deployer-secret"


def rpcs() -> Iterator[MethodDescriptor]:
    for service in SERVICES:
        yield from service.methods


@dataclass
class Guarded:
    address: str
    channel: aio.Channel


@pytest.fixture
async def guarded(tmp_path: Path) -> AsyncIterator[Guarded]:
    digest = hashlib.sha256(ADMIN_SECRET.encode()).hexdigest()
    config = ServerConfig(
        port=0,
        metrics_port=0,
        data_dir=str(tmp_path / "data"),
        infer_tokens=(INFER_SECRET,),
        admin_tokens=(f"deployer:sha256:{digest}",),
    )
    server = OrtServer(config)
    model = tmp_path / "linear.onnx"
    onnx_models.linear(model)
    server.parts.control.registry.register_file(model, "linear")
    await server.start()
    address = f"127.0.0.1:{server.port}"
    async with aio.insecure_channel(address) as channel:
        yield Guarded(address, channel)
    await server.stop(0)


async def call(channel: aio.Channel, method: MethodDescriptor, token: str | None) -> grpc.StatusCode:
    """Call `method` with an empty request message; the status it ends with (OK included)."""
    path = f"/{method.containing_service.full_name}/{method.name}"
    metadata = (("authorization", f"Bearer {token}"),) if token else ()
    empty = b""  # every message type's empty encoding
    if method.client_streaming:

        async def one() -> AsyncIterator[bytes]:
            yield empty

        requests = one()
    try:
        if method.client_streaming and method.server_streaming:
            stream = channel.stream_stream(path)(requests, metadata=metadata, timeout=2)
            async for _ in stream:
                pass
        elif method.client_streaming:
            await channel.stream_unary(path)(requests, metadata=metadata, timeout=2)
        elif method.server_streaming:  # WatchModels never ends by itself: its deadline ends it
            async for _ in channel.unary_stream(path)(empty, metadata=metadata, timeout=1):
                pass
        else:
            await channel.unary_unary(path)(empty, metadata=metadata, timeout=5)
    except aio.AioRpcError as exc:
        return exc.code()
    return grpc.StatusCode.OK


def scope_of(method: MethodDescriptor) -> str:
    service = method.containing_service.full_name
    if method.name in INFER.get(service, set()):
        return "infer"
    return "open" if service in OPEN else "admin"


async def test_every_rpc_is_denied_by_default_and_allowed_by_scope(guarded: Guarded) -> None:
    methods = list(rpcs())
    assert "SetShadow" in {m.name for m in methods}  # the method the old deny list forgot
    outcomes: dict[str, tuple[grpc.StatusCode, grpc.StatusCode, grpc.StatusCode]] = {}
    for method in methods:
        outcomes[method.full_name] = (
            await call(guarded.channel, method, None),
            await call(guarded.channel, method, INFER_SECRET),
            await call(guarded.channel, method, ADMIN_SECRET),
        )
    wrong = []
    for method in methods:
        anonymous, infer, admin = outcomes[method.full_name]
        scope = scope_of(method)
        expected_anonymous = (
            anonymous not in DENIED if scope == "open" else anonymous is grpc.StatusCode.UNAUTHENTICATED
        )
        expected_infer = (
            infer not in DENIED if scope != "admin" else infer is grpc.StatusCode.PERMISSION_DENIED
        )
        if not (expected_anonymous and expected_infer and admin not in DENIED):
            wrong.append(
                f"{method.full_name} ({scope}): none={anonymous.name} infer={infer.name} admin={admin.name}"
            )
    assert not wrong, "\n".join(wrong)
    assert await call(guarded.channel, methods[0], "not-a-token") is grpc.StatusCode.UNAUTHENTICATED


async def test_the_audit_log_names_the_hashed_token_that_made_a_change(
    guarded: Guarded, tmp_path: Path
) -> None:
    model = tmp_path / "v2.onnx"
    onnx_models.linear(model, seed=2)
    async with AsyncClient(guarded.address, retry=None, token=ADMIN_SECRET) as admin:
        assert (await admin.register(model, "linear")).version == 2
        await admin.promote("linear", 2)
        events = await admin.audit("linear")
    changes = {(event.action, event.version, event.actor) for event in events}
    assert {("register", 2, "deployer"), ("promote", 2, "deployer")} <= changes
    async with AsyncClient(guarded.address, retry=None, token=INFER_SECRET) as reader:
        assert (await reader.predict("linear", {"x": np.ones((1, 16), np.float32)})).version == 2
        with pytest.raises(aio.AioRpcError) as denied:
            await reader.set_shadow("linear", "1", 0.5)
    assert denied.value.code() is grpc.StatusCode.PERMISSION_DENIED
    assert "token 'infer-1' has the infer scope" in str(denied.value.details())


async def test_the_cli_sends_its_token(
    guarded: Guarded, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from ortserve.cli import main

    listing = ["models", "list", "--server", guarded.address, "--json"]
    assert await asyncio.to_thread(main, listing) == 1  # no token: one line naming the cause
    assert "UNAUTHENTICATED" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*listing, "--token", INFER_SECRET]) == 0
    assert "linear" in capsys.readouterr().out
    monkeypatch.setenv("ORTSERVE_TOKEN", INFER_SECRET)  # read when the parser is built
    promote = ["models", "promote", "linear", "1", "--server", guarded.address]
    assert await asyncio.to_thread(main, promote) == 1
    assert "PERMISSION_DENIED" in capsys.readouterr().err
    assert await asyncio.to_thread(main, [*promote, "--token", ADMIN_SECRET]) == 0
