"""Residency: pinned versions load on demand; unreferenced ones are evicted LRU under a memory budget."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.client.client import to_tensor
from ortserve.config import ServerConfig
from ortserve.records import VersionState
from ortserve.server.app import OrtServer
from tests import onnx_models

VERSIONS = 4


@pytest.fixture
async def budgeted(tmp_path: Path) -> AsyncIterator[tuple[OrtServer, ipb_grpc.InferenceServiceStub]]:
    # A budget of one byte: everything beyond what must stay resident is evicted.
    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), memory_budget_bytes=1)
    server = OrtServer(config)
    for seed in range(VERSIONS):
        path = tmp_path / f"m{seed}.onnx"
        onnx_models.linear(path, seed=seed)
        server.parts.control.registry.register_file(path, "many")
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    yield server, ipb_grpc.InferenceServiceStub(channel)
    await channel.close()
    await server.stop(0)


def states(server: OrtServer) -> dict[int, VersionState]:
    return {s.record.version: s.state for s in server.parts.control.pool.versions("many")}


def request(version: str) -> ipb.PredictRequest:
    return ipb.PredictRequest(
        model="many", version=version, inputs=[to_tensor("x", np.ones((1, 16), np.float32))]
    )


async def test_pinned_versions_load_on_demand_and_lru_ones_are_evicted(
    budgeted: tuple[OrtServer, ipb_grpc.InferenceServiceStub],
) -> None:
    server, stub = budgeted
    # Only the latest version is resident at start.
    assert states(server) == {
        1: VersionState.REGISTERED,
        2: VersionState.REGISTERED,
        3: VersionState.REGISTERED,
        4: VersionState.READY,
    }
    for version in (1, 2):
        response = await stub.Predict(request(str(version)), timeout=30)
        assert response.model_version == version
    # Loading 2 evicted 1 (least recently used, unreferenced); 4 stays: it is the latest.
    assert states(server) == {
        1: VersionState.REGISTERED,
        2: VersionState.READY,
        3: VersionState.REGISTERED,
        4: VersionState.READY,
    }
    await server.parts.control.set_alias("many", "production", 1, actor="test")
    assert states(server)[1] is VersionState.READY  # referenced: loaded and kept
    assert (await stub.Predict(request("3"), timeout=30)).model_version == 3
    final = states(server)
    assert (
        final[1] is VersionState.READY and final[4] is VersionState.READY and final[3] is VersionState.READY
    )
    assert final[2] is VersionState.REGISTERED
    assert (await stub.Predict(request(""), timeout=30)).model_version == 1
