"""Real ortserve servers in-process for the SDK tests, and helpers to count what each one served."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models


def make_server(data_dir: Path, models: dict[str, Path], db: str = "", **config: object) -> OrtServer:
    """A server on 127.0.0.1:0 with `models` registered (not started: `await server.start()`)."""
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(data_dir), db=db, **config))  # type: ignore[arg-type]
    for name, path in models.items():
        server.parts.control.registry.register_file(path, name)
    return server


def served(
    server: OrtServer, method: str = "/ortserve.api.v1.InferenceService/Predict", code: str = "OK"
) -> float:
    """How many `method` RPCs `server` answered with `code`, from its Prometheus registry."""
    value = server.parts.metrics.registry.get_sample_value(
        "ortserve_rpc_total", {"method": method, "code": code}
    )
    return value or 0.0


@pytest.fixture
def model_files(tmp_path: Path) -> dict[str, Path]:
    builders: dict[str, Callable[[Path], bytes]] = {"linear": onnx_models.linear, "add": onnx_models.add}
    paths = {}
    for name, build in builders.items():
        path = tmp_path / f"{name}.onnx"
        build(path)
        paths[name] = path
    return paths


@pytest.fixture
async def server(tmp_path: Path, model_files: dict[str, Path]) -> AsyncIterator[OrtServer]:
    """One started server with `linear` and `add`."""
    srv = make_server(tmp_path / "data", model_files)
    await srv.start()
    yield srv
    await srv.stop(0)


@pytest.fixture
def address(server: OrtServer) -> str:
    return f"127.0.0.1:{server.port}"
