"""bench/gpu.py: on a CUDA machine a short run prints the GPU-against-CPU and fp16-against-fp32 table;
elsewhere it says why it skipped and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import onnxruntime as ort
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "bench" / "gpu.py"

pytestmark = pytest.mark.gpu


def test_the_gpu_benchmark_runs_or_says_why_not() -> None:
    command = [sys.executable, str(SCRIPT), "--rounds", "1", "--batches", "1,8", "--models", "mlp"]
    done = subprocess.run(command, capture_output=True, text=True, timeout=600, check=False)
    assert done.returncode == 0, done.stderr
    if "CUDAExecutionProvider" not in ort.get_available_providers():
        assert done.stdout.startswith("skipped: no CUDA device: onnxruntime")
        assert str(ort.get_available_providers()) in done.stdout
        return
    assert "cuda/cpu" in done.stdout and "fp16/fp32" in done.stdout
    assert "fp16 against fp32 on CUDA: max abs diff" in done.stdout
