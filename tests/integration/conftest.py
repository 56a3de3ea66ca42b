"""A real ortserve on 127.0.0.1 (port 0) with tiny models registered, and aio stubs to call it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc import aio
from onnx import TensorProto

from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.config import MiB, ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models


@dataclass
class Running:
    server: OrtServer
    address: str
    channel: aio.Channel
    inference: ipb_grpc.InferenceServiceStub
    registry: rpb_grpc.RegistryServiceStub
    models: dict[str, Path]


MODELS = {
    "linear": onnx_models.linear,
    "add": onnx_models.add,
    "strings": lambda p: onnx_models.identity(p, elem=TensorProto.STRING, shape=("N",)),
    "fixed": onnx_models.fixed_batch,
}


@pytest.fixture
async def running(tmp_path: Path) -> AsyncIterator[Running]:
    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), max_message_bytes=8 * MiB)
    server = OrtServer(config)
    registry = server.parts.control.registry
    paths = {}
    for name, build in MODELS.items():
        path = tmp_path / f"{name}.onnx"
        build(path)
        registry.register_file(path, name)
        paths[name] = path
    port = await server.start()
    address = f"127.0.0.1:{port}"
    options = [("grpc.max_send_message_length", 64 * MiB), ("grpc.max_receive_message_length", 64 * MiB)]
    channel = aio.insecure_channel(address, options=options)
    yield Running(
        server,
        address,
        channel,
        ipb_grpc.InferenceServiceStub(channel),
        rpb_grpc.RegistryServiceStub(channel),
        paths,
    )
    await channel.close()
    await server.stop(0)


async def expect_error(call: object, code: grpc.StatusCode, message: str) -> None:
    """Await `call` and assert it fails with exactly `code` and a message containing `message`."""
    with pytest.raises(aio.AioRpcError) as info:
        await call  # type: ignore[misc]
    assert info.value.code() == code, info.value.details()
    assert message in (info.value.details() or ""), info.value.details()
