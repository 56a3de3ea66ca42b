"""On a CUDA machine: a version that prefers CUDA, with strict providers, runs on the GPU and agrees
with ONNX Runtime on CPU. Skipped where onnxruntime-gpu or an NVIDIA device is missing."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from pathlib import Path

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
from ortserve.records import ProviderSpec
from ortserve.server.app import OrtServer
from tests import onnx_models

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


def _no_cuda_reason() -> str:
    """Why the CUDA tests cannot run here ("" when they can)."""
    if CUDA not in ort.get_available_providers():
        return f"onnxruntime {ort.__version__} offers no {CUDA} (install ortserve[gpu], i.e. onnxruntime-gpu)"
    if Path("/dev/nvidia0").exists():
        return ""
    smi = shutil.which("nvidia-smi")
    if smi is not None:
        listed = subprocess.run([smi, "-L"], capture_output=True, text=True, timeout=30, check=False)
        if listed.returncode == 0 and "GPU" in listed.stdout:
            return ""
    return "no NVIDIA GPU device is present (/dev/nvidia0 missing, nvidia-smi -L lists none)"


NO_CUDA = _no_cuda_reason()

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(bool(NO_CUDA), reason=NO_CUDA or "CUDA is available")]


async def test_strict_cuda_version_runs_on_the_gpu_and_matches_cpu(tmp_path: Path) -> None:
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path, n_in=64, n_out=8, seed=7, bias=0.5)
    x = np.random.default_rng(0).standard_normal((5, 64)).astype(np.float32)
    expected = ort.InferenceSession(str(path), providers=[CPU]).run(None, {"x": x})[0]

    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), strict_providers=True)
    server = OrtServer(config)
    control = server.parts.control
    record = await asyncio.to_thread(
        control.registry.register_file, path, "gpu", providers=(ProviderSpec(CUDA), ProviderSpec(CPU))
    )
    port = await server.start()
    channel = aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        registry = rpb_grpc.RegistryServiceStub(channel)
        inference = ipb_grpc.InferenceServiceStub(channel)
        shown = (await registry.GetModelVersion(rpb.GetModelVersionRequest(name="gpu", version=1))).version
        assert shown.state == mpb.VERSION_STATE_READY, shown.error
        assert shown.active_providers[0] == CUDA
        for _ in range(3):
            response = await inference.Predict(
                ipb.PredictRequest(model="gpu", inputs=[to_tensor("x", x)]), timeout=30
            )
            assert response.model_version == record.version
            assert response.timing.provider == CUDA
            got = from_tensor(next(t for t in response.outputs if t.name == "y"))
            np.testing.assert_allclose(got, expected, rtol=1e-3, atol=1e-3)
    finally:
        await channel.close()
        await server.stop(0)
