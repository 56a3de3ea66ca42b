"""A version that prefers CUDA on a machine without it: recorded fallback to CPU, or with strict
providers a FAILED version that takes no traffic while the previous one keeps serving."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc import aio
from structlog.testing import capture_logs

from ortserve import cli
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.aio import AsyncClient
from ortserve.client.client import to_tensor
from ortserve.config import ServerConfig, load_config
from ortserve.errors import InvalidInput
from ortserve.records import ProviderSpec
from ortserve.runtime.session import OrtSession
from ortserve.server.app import OrtServer
from tests import onnx_models

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
CUDA_FIRST = (ProviderSpec(CUDA), ProviderSpec(CPU))
X = np.ones((1, 16), np.float32)

pytestmark = pytest.mark.skipif(
    CUDA in ort.get_available_providers(),
    reason="ONNX Runtime offers CUDAExecutionProvider here: the no-CUDA fallback does not apply",
)


class Running:
    def __init__(self, server: OrtServer, channel: aio.Channel) -> None:
        self.server = server
        self.inference = ipb_grpc.InferenceServiceStub(channel)
        self.registry = rpb_grpc.RegistryServiceStub(channel)

    async def register(self, path: Path, providers: tuple[ProviderSpec, ...], **build: Any) -> int:
        onnx_models.linear(path, **build)
        control = self.server.parts.control
        record = await asyncio.to_thread(control.registry.register_file, path, "m", providers=providers)
        await control.refresh()
        await control.settle()
        return record.version

    async def version(self, number: int) -> mpb.ModelVersion:
        request = rpb.GetModelVersionRequest(name="m", version=number)
        return (await self.registry.GetModelVersion(request)).version

    async def predict(self, version: str = "") -> ipb.PredictResponse:
        return await self.inference.Predict(
            ipb.PredictRequest(model="m", version=version, inputs=[to_tensor("x", X)]), timeout=10
        )


@asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[Running]:
    server = OrtServer(config)
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, channel)
    finally:
        await channel.close()
        await server.stop(0)


def plain(tmp_path: Path) -> ServerConfig:
    return ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"))


def strict_by_argument(tmp_path: Path) -> ServerConfig:
    return ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), strict_providers=True)


def strict_by_environment(tmp_path: Path) -> ServerConfig:
    environ = {"ORTSERVE_STRICT_PROVIDERS": "true", "ORTSERVE_DATA_DIR": str(tmp_path / "data")}
    return load_config(environ=environ, overrides={"port": 0, "metrics_port": 0})


async def test_without_cuda_a_cuda_first_version_falls_back_to_cpu_visibly(tmp_path: Path) -> None:
    async with serving(plain(tmp_path)) as running:
        with capture_logs() as logs:
            version = await running.register(tmp_path / "m.onnx", CUDA_FIRST)
        shown = await running.version(version)
        assert shown.state == mpb.VERSION_STATE_READY, shown.error
        assert [p.name for p in shown.providers] == [CUDA, CPU]  # the preference as registered
        assert list(shown.active_providers) == [CPU]
        warnings = [e for e in logs if e["event"] == "provider_fallback"]
        assert len(warnings) == 1, logs
        assert warnings[0]["log_level"] == "warning"
        assert warnings[0]["missing"] == [CUDA] and warnings[0]["version"] == version
        response = await running.predict()
        assert response.model_version == version and response.timing.provider == CPU


@pytest.mark.parametrize("config", [strict_by_argument, strict_by_environment])
async def test_strict_providers_fail_a_cuda_version_and_keep_the_previous_one(
    tmp_path: Path, config: Callable[[Path], ServerConfig]
) -> None:
    async with serving(config(tmp_path)) as running:
        assert running.server.config.strict_providers is True
        good = await running.register(tmp_path / "good.onnx", (ProviderSpec(CPU),), seed=1)
        await running.registry.SetAlias(rpb.SetAliasRequest(name="m", alias="production", version=good))
        assert (await running.predict()).model_version == good

        cuda = await running.register(tmp_path / "cuda.onnx", CUDA_FIRST, seed=2)
        shown = await running.version(cuda)
        assert shown.state == mpb.VERSION_STATE_FAILED
        assert CUDA in shown.error and "not available" in shown.error
        assert list(shown.active_providers) == []

        for _ in range(10):
            response = await running.predict()
            assert response.model_version == good and response.timing.provider == CPU
        with pytest.raises(aio.AioRpcError) as refused:
            await running.registry.SetAlias(rpb.SetAliasRequest(name="m", alias="production", version=cuda))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert CUDA in (refused.value.details() or "")
        with pytest.raises(aio.AioRpcError) as pinned:
            await running.predict(str(cuda))
        assert pinned.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert (await running.predict("production")).model_version == good


async def test_strict_providers_without_an_alias_route_to_the_latest_ready_version(tmp_path: Path) -> None:
    async with serving(strict_by_argument(tmp_path)) as running:
        good = await running.register(tmp_path / "good.onnx", (ProviderSpec(CPU),), seed=1)
        cuda = await running.register(tmp_path / "cuda.onnx", CUDA_FIRST, seed=2)
        assert cuda > good
        assert (await running.version(cuda)).state == mpb.VERSION_STATE_FAILED
        for _ in range(10):
            assert (await running.predict()).model_version == good


# --- provider specs end to end: the SDK's spec strings, validation, fallback as data ------------


def fallback_series(server: OrtServer, version: int) -> dict[str, str]:
    """Labels of the version's ortserve_provider_fallback series ({} when there is none)."""
    for metric in server.parts.metrics.registry.collect():
        for sample in metric.samples:
            if sample.name == "ortserve_provider_fallback" and sample.labels["version"] == str(version):
                assert sample.value == 1
                return dict(sample.labels)
    return {}


async def test_a_fallback_is_data_on_the_version_and_in_the_metrics(tmp_path: Path) -> None:
    async with serving(plain(tmp_path)) as running:
        path = tmp_path / "m.onnx"
        onnx_models.linear(path)
        async with AsyncClient(f"127.0.0.1:{running.server.port}") as client:
            info = await client.register(
                path, "m", providers=["cuda:device_id=0,gpu_mem_limit=1073741824", "cpu"]
            )
        shown = await running.version(info.version)
        assert shown.state == mpb.VERSION_STATE_READY, shown.error
        assert [(p.name, dict(p.options)) for p in shown.providers] == [
            (CUDA, {"device_id": "0", "gpu_mem_limit": "1073741824"}),
            (CPU, {}),
        ]
        assert list(shown.active_providers) == [CPU]
        assert list(shown.fallback_providers) == [CUDA]
        assert fallback_series(running.server, info.version) == {
            "model": "m",
            "version": str(info.version),
            "requested": f"{CUDA},{CPU}",
            "active": CPU,
        }
        response = await running.predict()
        assert response.timing.provider == CPU
        compute = running.server.parts.metrics.registry.get_sample_value(
            "ortserve_compute_duration_seconds_count",
            {"model": "m", "version": str(info.version), "provider": CPU},
        )
        assert compute is not None and compute >= 1
        session = running.server.parts.control.pool.slot("m", info.version).session
        assert session is not None and session.bound_runs == 0  # CPU: no IO binding
        assert type(session) is OrtSession  # the CPU path is InferenceSession.run, no IO binding

        await running.registry.UnloadModelVersion(
            rpb.UnloadModelVersionRequest(name="m", version=info.version)
        )
        assert list((await running.version(info.version)).fallback_providers) == []
        assert fallback_series(running.server, info.version) == {}


async def test_strict_providers_fail_the_load_naming_cuda(tmp_path: Path) -> None:
    async with serving(strict_by_argument(tmp_path)) as running:
        path = tmp_path / "m.onnx"
        onnx_models.linear(path)
        async with AsyncClient(f"127.0.0.1:{running.server.port}") as client:
            info = await client.register(path, "m", providers=["cuda", "cpu"], load=False)
        with pytest.raises(aio.AioRpcError) as refused:
            await running.registry.LoadModelVersion(
                rpb.LoadModelVersionRequest(name="m", version=info.version)
            )
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert CUDA in (refused.value.details() or "")
        assert fallback_series(running.server, info.version) == {}


@pytest.mark.parametrize(
    ("providers", "named"),
    [
        (["CUDAExecutionProvder", "cpu"], ["'CUDAExecutionProvder'", CUDA, CPU]),
        (["cuda:gpu_memory_limit=1", "cpu"], ["'gpu_memory_limit'", CUDA]),
        (["tensorrt:trt_fp16=1"], ["'trt_fp16'", "TensorrtExecutionProvider"]),
        (["cpu:use_arena=0"], ["'use_arena'", CPU]),
    ],
)
async def test_an_unknown_provider_or_option_is_refused_at_registration(
    tmp_path: Path, providers: list[str], named: list[str]
) -> None:
    async with serving(plain(tmp_path)) as running:
        path = tmp_path / "m.onnx"
        onnx_models.linear(path)
        async with AsyncClient(f"127.0.0.1:{running.server.port}") as client:
            with pytest.raises(grpc.RpcError) as refused:
                await client.register(path, "m", providers=providers)
            assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
            for name in named:
                assert name in (refused.value.details() or "")
            assert running.server.parts.control.registry.all_versions() == []
            good = await client.register(path, "m", providers=[(CPU, {})])
        assert good.version == 1 and (await running.predict()).model_version == 1


async def test_the_server_default_carries_options_into_the_session(tmp_path: Path) -> None:
    config = load_config(
        environ={"ORTSERVE_PROVIDERS": "cuda:device_id=0;cpu", "ORTSERVE_DATA_DIR": str(tmp_path / "data")},
        overrides={"port": 0, "metrics_port": 0},
    )
    async with serving(config) as running:
        version = await running.register(tmp_path / "m.onnx", ())
        shown = await running.version(version)
        assert list(shown.providers) == []  # the version names none: the server's default applies
        assert list(shown.fallback_providers) == [CUDA] and list(shown.active_providers) == [CPU]
        assert fallback_series(running.server, version)["requested"] == f"{CUDA},{CPU}"


def test_a_server_default_with_an_unknown_option_does_not_start(tmp_path: Path) -> None:
    config = ServerConfig(
        port=0, metrics_port=0, data_dir=str(tmp_path / "data"), providers=("cuda:gpu_mem=1", "cpu")
    )
    with pytest.raises(InvalidInput) as refused:
        OrtServer(config)
    assert "server setting providers: unknown option 'gpu_mem' for CUDAExecutionProvider" in str(
        refused.value
    )


async def test_the_cli_registers_provider_specs_in_order_and_refuses_bad_ones(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    async with serving(plain(tmp_path)) as running:
        path = tmp_path / "m.onnx"
        onnx_models.linear(path)
        server = f"127.0.0.1:{running.server.port}"

        async def run(*argv: str) -> tuple[int, str]:
            capsys.readouterr()
            with capture_logs():  # the in-process server logs to the same stdout
                code = await asyncio.to_thread(cli.main, list(argv))
            return code, capsys.readouterr().err

        base = ("models", "register", str(path), "--name", "m", "--server", server)
        with pytest.raises(SystemExit) as usage:  # argparse: a usage error, exit status 2
            await run(*base, "--provider", "cuda:device_id=0,gpu_mem_limit")
        assert usage.value.code == 2
        assert "option 'gpu_mem_limit' is not key=value" in capsys.readouterr().err
        code, err = await run(*base, "--provider", "cuda:gpu_mem=1")
        assert code != 0 and "unknown option 'gpu_mem' for CUDAExecutionProvider" in err
        cuda = "cuda:device_id=0,gpu_mem_limit=1073741824"
        code, err = await run(*base, "--provider", cuda, "--provider", "cpu")
        assert code == 0, err
        shown = await running.version(1)
        assert [(p.name, dict(p.options)) for p in shown.providers] == [
            (CUDA, {"device_id": "0", "gpu_mem_limit": "1073741824"}),
            (CPU, {}),
        ]
        assert list(shown.fallback_providers) == [CUDA]
        # One flag may hold a ';'-separated list, as ORTSERVE_PROVIDERS and serve --providers do.
        code, err = await run(*base, "--provider", "cuda:device_id=0;cpu")
        assert code == 0, err
        shown = await running.version(2)
        assert [(p.name, dict(p.options)) for p in shown.providers] == [(CUDA, {"device_id": "0"}), (CPU, {})]
