"""`serve --model-dir`: a single model.onnx or a Triton-style repository registered at start, once."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from structlog.testing import capture_logs

from ortserve.client import AsyncClient
from ortserve.config import ServerConfig
from ortserve.errors import NotFound
from ortserve.records import BatchingSettings, VersionState
from ortserve.server.app import OrtServer
from tests import onnx_models, server_calls
from tests.integration.processes import start_server

X = np.ones((2, 16), np.float32)

DYNAMIC_CONFIG = """
name: "beta"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 1 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 64 }
}
"""


def _version(repo: Path, model: str, number: int, seed: int) -> Path:
    folder = repo / model / str(number)
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    onnx_models.linear(path, seed=seed)
    return path


def _triton_repository(repo: Path) -> None:
    """alpha: versions 1 and 2 (different weights); beta: version 1 with dynamic batching."""
    _version(repo, "alpha", 1, seed=1)
    _version(repo, "alpha", 2, seed=2)
    _version(repo, "beta", 1, seed=3)
    (repo / "beta" / "config.pbtxt").write_text(DYNAMIC_CONFIG)


def _config(tmp_path: Path, model_dir: Path, **settings: Any) -> ServerConfig:
    return ServerConfig(
        port=0, metrics_port=0, data_dir=str(tmp_path / "data"), model_dir=str(model_dir), **settings
    )


@asynccontextmanager
async def _serving(config: ServerConfig) -> AsyncIterator[tuple[OrtServer, AsyncClient]]:
    server = OrtServer(config)
    try:
        port = await server.start()
        async with AsyncClient(f"127.0.0.1:{port}", retry=None) as client:
            yield server, client
    finally:
        await server.stop(0)


def _events(logs: list[dict[str, Any]], event: str) -> dict[str, str]:
    """path -> reason of the log lines named `event`."""
    return {line["path"]: line.get("reason", "") for line in logs if line["event"] == event}


async def test_single_model_onnx_is_named_after_its_folder(tmp_path: Path) -> None:
    folder = tmp_path / "fraud-scorer"
    folder.mkdir()
    onnx_models.linear(folder / "model.onnx")
    (folder / "README.txt").write_text("not a model")
    with capture_logs() as logs:
        async with _serving(_config(tmp_path, folder)) as (server, client):
            result = await client.predict("fraud-scorer", {"x": X})
            assert (result.version, result.outputs["y"].shape) == (1, (2, 4))
            versions = server.parts.control.registry.list_versions("fraud-scorer")
            assert [(v.version, v.state, v.created_by) for v in versions] == [
                (1, VersionState.REGISTERED, "model-dir")
            ]
    assert _events(logs, "model_dir_skipped") == {
        str(folder / "README.txt"): "not used: the directory holds a single model.onnx"
    }


async def test_triton_repository_registers_every_version_with_its_batching(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    _triton_repository(repo)
    (repo / "NOTES.md").write_text("not a model")
    (repo / "alpha" / "latest").mkdir()
    async with _serving(_config(tmp_path, repo)) as (server, client):
        registry = server.parts.control.registry
        alpha = registry.list_versions("alpha")
        assert [(v.version, v.labels["model_dir.version"]) for v in alpha] == [(1, "1"), (2, "2")]
        assert alpha[0].batching == BatchingSettings()  # no config.pbtxt: the defaults
        assert alpha[0].description == "from the model directory: alpha/1/model.onnx"
        (beta,) = registry.list_versions("beta")
        assert beta.batching == BatchingSettings(
            max_batch_size=8, max_queue_delay_us=500, preferred_batch_sizes=(4, 8), max_queue_size=64
        )
        assert (await client.predict("alpha", {"x": X})).version == 2  # the latest takes traffic
        assert (await client.predict("alpha", {"x": X}, version=1)).version == 1
        assert (await client.predict("beta", {"x": X})).version == 1


async def test_a_restart_registers_only_new_files(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    _triton_repository(repo)
    async with _serving(_config(tmp_path, repo)):
        pass
    with capture_logs() as logs:
        async with _serving(_config(tmp_path, repo)) as (server, _client):
            registry = server.parts.control.registry
            assert [v.version for v in registry.list_versions("alpha")] == [1, 2]
            assert [v.version for v in registry.list_versions("beta")] == [1]
    assert len(_events(logs, "model_dir_unchanged")) == 3
    assert _events(logs, "model_dir_registered") == {}

    _version(repo, "alpha", 3, seed=4)
    _version(repo, "alpha", 4, seed=1)  # the bytes of version 1: not a new version
    async with _serving(_config(tmp_path, repo)) as (server, client):
        assert [v.version for v in server.parts.control.registry.list_versions("alpha")] == [1, 2, 3]
        assert (await client.predict("alpha", {"x": X})).version == 3


async def test_corrupt_files_are_reported_and_the_rest_serves(tmp_path: Path) -> None:
    repo = tmp_path / "repository"
    _version(repo, "good", 1, seed=1)
    (repo / "good" / "2").mkdir()
    (repo / "good" / "2" / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    (repo / "broken" / "1").mkdir(parents=True)
    (repo / "broken" / "1" / "model.onnx").write_bytes(b"")
    _version(repo, "badconfig", 1, seed=2)
    (repo / "badconfig" / "config.pbtxt").write_text("max_batch_size: eight\n")
    _version(repo, "plan", 1, seed=3)
    (repo / "plan" / "config.pbtxt").write_text('platform: "tensorrt_plan"\n')
    (repo / "Upper").mkdir()
    with capture_logs() as logs:
        async with _serving(_config(tmp_path, repo)) as (server, client):
            assert (await client.predict("good", {"x": X})).version == 1
            registry = server.parts.control.registry
            assert [v.version for v in registry.list_versions("good")] == [1]
            for missing in ("broken", "badconfig", "plan"):
                with pytest.raises(NotFound):
                    registry.get_model(missing)
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await client.predict("broken", {"x": X})
            assert info.value.code() == grpc.StatusCode.NOT_FOUND
    rejected = _events(logs, "model_dir_rejected")
    assert set(rejected) == {
        str(repo / "good" / "2" / "model.onnx"),
        str(repo / "broken" / "1" / "model.onnx"),
    }
    assert rejected[str(repo / "broken" / "1" / "model.onnx")] == "the file is empty"
    assert rejected[str(repo / "good" / "2" / "model.onnx")].startswith(
        "model bytes are not a valid ONNX model"
    )
    skipped = _events(logs, "model_dir_skipped")
    assert "config.pbtxt is not a valid Triton model configuration" in skipped[str(repo / "badconfig")]
    assert "'tensorrt_plan', not ONNX Runtime" in skipped[str(repo / "plan")]
    assert "model name 'Upper' is not valid" in skipped[str(repo / "Upper")]


def test_cli_serves_a_single_model_under_model_name(tmp_path: Path) -> None:
    folder = tmp_path / "mnt-models"
    folder.mkdir()
    onnx_models.linear(folder / "model.onnx")
    args = ("--data-dir", str(tmp_path / "data"), "--model-dir", str(folder), "--model-name", "scorer")
    process = start_server(tmp_path, "model-dir", *args)
    try:
        conn = server_calls.connect(process)
        assert server_calls.predict(conn, name="scorer").model_version == 1
        conn.close()
    finally:
        assert process.stop() == 0, process.output()


def test_cli_refuses_a_folder_name_that_is_no_model_name(tmp_path: Path) -> None:
    folder = tmp_path / "My Models"
    folder.mkdir()
    onnx_models.linear(folder / "model.onnx")
    with pytest.raises(AssertionError, match="set model_name: model name 'My Models' is not valid"):
        start_server(tmp_path, "bad-name", "--data-dir", str(tmp_path / "data"), "--model-dir", str(folder))
