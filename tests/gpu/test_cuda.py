"""The GPU path on a CUDA machine (`make test-gpu`): CUDA is the active provider, strict providers
fail a version whose CUDA does not start, results match ONNX Runtime on CPU for mlp- and cnn-like
models, runs go through IO binding, and batching runs on the device. Skipped, with the reason, where
onnxruntime-gpu or an NVIDIA device is missing."""

from __future__ import annotations

import asyncio
import importlib.util
import shutil
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import ModuleType

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.client import from_tensor, to_tensor
from ortserve.config import ServerConfig
from ortserve.provider_specs import parse_spec
from ortserve.records import BatchingSettings, ProviderSpec
from ortserve.runtime.session import OrtSession
from ortserve.server.app import OrtServer
from tests import onnx_models


def _bench_models() -> ModuleType:
    """bench/models.py: the benchmark's mlp and cnn (bench/ is not a package)."""
    path = Path(__file__).resolve().parents[2] / "bench" / "models.py"
    spec = importlib.util.spec_from_file_location("bench_models", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


bench_models = _bench_models()

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
TRT = "TensorrtExecutionProvider"
CUDA_FIRST = (ProviderSpec(CUDA), ProviderSpec(CPU))


def _no_cuda_reason() -> str:
    """Why the CUDA tests cannot run here ("" when they can)."""
    available = ort.get_available_providers()
    if CUDA not in available:
        return (
            f"no CUDA device: onnxruntime {ort.__version__} reports providers {available} "
            "(make test-gpu installs ortserve[gpu], i.e. onnxruntime-gpu, on a machine with an NVIDIA GPU)"
        )
    if Path("/dev/nvidia0").exists():
        return ""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
        if listed.returncode == 0 and "GPU" in listed.stdout:
            return ""
    return f"no CUDA device: onnxruntime reports providers {available} but /dev/nvidia0 is missing"


NO_CUDA = _no_cuda_reason()

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA or "CUDA is available")]


class Running:
    def __init__(self, server: OrtServer, channel: aio.Channel) -> None:
        self.server = server
        self.inference = ipb_grpc.InferenceServiceStub(channel)
        self.registry = rpb_grpc.RegistryServiceStub(channel)

    async def register(
        self,
        path: Path,
        name: str,
        providers: tuple[ProviderSpec, ...] = CUDA_FIRST,
        batching: BatchingSettings | None = None,
    ) -> int:
        control = self.server.parts.control
        record = await asyncio.to_thread(
            control.registry.register_file, path, name, providers=providers, batching=batching
        )
        await control.refresh()
        await control.settle()
        return record.version

    async def version(self, name: str, number: int) -> mpb.ModelVersion:
        request = rpb.GetModelVersionRequest(name=name, version=number)
        return (await self.registry.GetModelVersion(request)).version

    async def predict(self, name: str, x: np.ndarray, input_name: str = "x") -> ipb.PredictResponse:
        request = ipb.PredictRequest(model=name, inputs=[to_tensor(input_name, x)])
        return await self.inference.Predict(request, timeout=60)

    def session(self, name: str, number: int) -> OrtSession:
        session = self.server.parts.control.pool.slot(name, number).session
        assert session is not None, f"{name} {number} is not loaded"
        return session


@asynccontextmanager
async def serving(tmp_path: Path, *, strict: bool = False) -> AsyncIterator[Running]:
    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), strict_providers=strict)
    server = OrtServer(config)
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield Running(server, channel)
    finally:
        await channel.close()
        await server.stop(0)


def cpu_reference(path: Path, x: np.ndarray, input_name: str = "x") -> np.ndarray:
    result: np.ndarray = ort.InferenceSession(str(path), providers=[CPU]).run(None, {input_name: x})[0]
    return result


def assert_close_to_cpu(got: np.ndarray, expected: np.ndarray) -> None:
    """cuDNN and cuBLAS pick other algorithms than MLAS and use TF32 by default (use_tf32): agreement
    within 1% of the outputs' scale, and the same argmax on every row whose top two outputs are
    further apart than that."""
    tolerance = 1e-2 * max(1.0, float(np.abs(expected).max()))
    np.testing.assert_allclose(got, expected, rtol=1e-2, atol=tolerance)
    top2 = np.sort(expected, axis=1)[:, -2:]
    clear = top2[:, 1] - top2[:, 0] > 2 * tolerance
    assert (got.argmax(axis=1) == expected.argmax(axis=1))[clear].all()


async def test_strict_cuda_version_runs_on_the_gpu_through_io_binding(tmp_path: Path) -> None:
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path, n_in=64, n_out=8, seed=7, bias=0.5)
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    expected = cpu_reference(path, x)
    async with serving(tmp_path, strict=True) as running:
        version = await running.register(path, "gpu")
        shown = await running.version("gpu", version)
        assert shown.state == mpb.VERSION_STATE_READY, shown.error
        assert shown.active_providers[0] == CUDA and list(shown.fallback_providers) == []
        before = running.session("gpu", version).bound_runs  # the warm-up ran bound already
        assert before >= 1
        for _ in range(3):
            response = await running.predict("gpu", x)
            assert response.model_version == version and response.timing.provider == CUDA
            assert_close_to_cpu(from_tensor(next(t for t in response.outputs if t.name == "y")), expected)
        assert running.session("gpu", version).bound_runs >= before + 3
        compute = running.server.parts.metrics.registry.get_sample_value(
            "ortserve_compute_duration_seconds_count",
            {"model": "gpu", "version": str(version), "provider": CUDA},
        )
        assert compute is not None and compute >= 3


async def test_strict_providers_fail_a_version_whose_cuda_does_not_start(tmp_path: Path) -> None:
    """device_id=99 names no device: ONNX Runtime either raises or falls back to CPU; both are a
    FAILED_PRECONDITION naming CUDA under strict providers, and a good version still serves."""
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path, n_in=16, n_out=4)
    async with serving(tmp_path, strict=True) as running:
        bad = (parse_spec("cuda:device_id=99"), ProviderSpec(CPU))
        version = await running.register(path, "gpu", providers=bad)
        shown = await running.version("gpu", version)
        assert shown.state == mpb.VERSION_STATE_FAILED and CUDA in shown.error
        with pytest.raises(aio.AioRpcError) as refused:
            await running.registry.LoadModelVersion(rpb.LoadModelVersionRequest(name="gpu", version=version))
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert CUDA in (refused.value.details() or "")
        good = await running.register(path, "gpu")
        response = await running.predict("gpu", np.ones((1, 16), np.float32))
        assert response.model_version == good and response.timing.provider == CUDA


async def test_without_strict_a_cuda_that_does_not_start_is_a_recorded_fallback(tmp_path: Path) -> None:
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path, n_in=16, n_out=4)
    async with serving(tmp_path) as running:
        version = await running.register(
            path, "gpu", providers=(parse_spec("cuda:device_id=99"), ProviderSpec(CPU))
        )
        shown = await running.version("gpu", version)
        if shown.state == mpb.VERSION_STATE_FAILED:
            # This ONNX Runtime raised instead of falling back: the load names CUDA.
            assert CUDA in shown.error
            return
        assert list(shown.active_providers) == [CPU] and list(shown.fallback_providers) == [CUDA]
        labels = {"model": "gpu", "version": str(version), "requested": f"{CUDA},{CPU}", "active": CPU}
        assert (
            running.server.parts.metrics.registry.get_sample_value("ortserve_provider_fallback", labels) == 1
        )
        assert running.session("gpu", version).bound_runs == 0  # on CPU: the plain run


@pytest.mark.parametrize("model", ["mlp", "cnn"])
async def test_results_match_onnx_runtime_on_cpu(tmp_path: Path, model: str) -> None:
    path = bench_models.build(model, tmp_path)
    x = bench_models.example_input(model, rows=8, seed=1)
    expected = cpu_reference(path, x)
    async with serving(tmp_path) as running:
        version = await running.register(path, model)
        response = await running.predict(model, x)
        assert response.timing.provider == CUDA
        got = from_tensor(next(t for t in response.outputs if t.name == "y"))
        assert got.shape == expected.shape
        assert_close_to_cpu(got, expected)
        assert running.session(model, version).bound_runs >= 1


async def test_concurrent_requests_batch_on_the_device(tmp_path: Path) -> None:
    path = bench_models.build("cnn", tmp_path)
    rows = [bench_models.example_input("cnn", rows=1, seed=seed) for seed in range(32)]
    # A long window: requests sent together are collected into batches larger than one.
    batching = BatchingSettings(max_batch_size=32, max_queue_delay_us=50_000)
    async with serving(tmp_path) as running:
        version = await running.register(path, "cnn", batching=batching)
        responses = await asyncio.gather(*(running.predict("cnn", x) for x in rows))
        assert {r.timing.provider for r in responses} == {CUDA}
        assert max(r.timing.batch_size for r in responses) > 1
        expected = cpu_reference(path, np.concatenate(rows))
        got = np.concatenate([from_tensor(next(t for t in r.outputs if t.name == "y")) for r in responses])
        assert_close_to_cpu(got, expected)
        batches = running.server.parts.metrics.registry.get_sample_value(
            "ortserve_compute_duration_seconds_count",
            {"model": "cnn", "version": str(version), "provider": CUDA},
        )
        assert batches is not None and 1 <= batches < len(rows)


async def test_tensorrt_engines_are_cached_under_the_data_directory(tmp_path: Path) -> None:
    if TRT not in ort.get_available_providers():
        pytest.skip(f"onnxruntime reports no {TRT}: {ort.get_available_providers()}")
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path, n_in=16, n_out=4)
    trt = parse_spec("tensorrt:trt_engine_cache_enable=1,trt_timing_cache_enable=1")
    async with serving(tmp_path) as running:
        version = await running.register(path, "trt", providers=(trt, ProviderSpec(CUDA), ProviderSpec(CPU)))
        shown = await running.version("trt", version)
        assert shown.state == mpb.VERSION_STATE_READY, shown.error
        if shown.active_providers[0] != TRT:
            pytest.skip(
                f"TensorRT did not start here (libnvinfer missing?): runs on {list(shown.active_providers)}"
            )
        await running.predict("trt", np.ones((4, 16), np.float32))
        cache = tmp_path / "data" / "trt-engines" / f"trt-{version}"
        assert cache.is_dir() and any(cache.iterdir())
