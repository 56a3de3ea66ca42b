"""A Triton model repository written by tests: several ONNX models and configurations, some that
ortserve imports, some it must list as skipped or unreadable."""

from __future__ import annotations

from pathlib import Path

from tests import onnx_models

DYNAMIC = """
name: "dyn"
platform: "onnxruntime_onnx"
max_batch_size: 8
version_policy: { all: {} }
input [ { name: "x" data_type: TYPE_FP32 dims: [ 16 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
instance_group [ { count: 2 kind: KIND_CPU } ]
dynamic_batching {
  preferred_batch_size: [ 4, 8 ]
  max_queue_delay_microseconds: 500
  default_queue_policy { max_queue_size: 64 timeout_action: REJECT }
}
"""
LATEST = """
backend: "onnxruntime"
max_batch_size: 4
version_policy: { latest: { num_versions: 1 } }
model_warmup [
  { name: "zeros" batch_size: 1
    inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 16 ] zero_data: true } } }
]
"""
SPECIFIC = """
platform: "onnxruntime_onnx"
version_policy { specific { versions: [ 1, 3, 5 ] } }
"""
TENSORRT = """
platform: "onnxruntime_onnx"
max_batch_size: 16
instance_group [ { count: 1 kind: KIND_GPU gpus: [ 0 ] } ]
optimization { execution_accelerators {
  gpu_execution_accelerator : [ {
    name : "tensorrt"
    parameters { key: "precision_mode" value: "FP16" }
  } ]
} }
sequence_batching { max_sequence_idle_microseconds: 5000000 }
response_cache { enable: true }
"""
OPENVINO = """
platform: "onnxruntime_onnx"
instance_group [ { kind: KIND_CPU rate_limiter { resources [ { name: "r" count: 1 } ] } } ]
optimization { execution_accelerators { cpu_execution_accelerator : [ { name : "openvino" } ] } }
"""
ENSEMBLE = """
name: "ens"
platform: "ensemble"
max_batch_size: 8
ensemble_scheduling { step [ { model_name: "dyn" model_version: -1 } ] }
"""
PYTHON = """
backend: "python"
max_batch_size: 8
"""
BROKEN = "max_batch_size: eight\n"


def version(repo: Path, model: str, number: int, seed: int) -> Path:
    folder = repo / model / str(number)
    folder.mkdir(parents=True)
    path = folder / "model.onnx"
    onnx_models.linear(path, seed=seed)
    return path


def write_repository(repo: Path) -> Path:
    """Models: dyn (all of 1, 2), latest (3 of 1..3), specific (1 and 3 of 1..3), trt, ov, plain
    (no config.pbtxt); skipped: ens (ensemble), py (python backend); unreadable: broken."""
    for number in (1, 2):
        version(repo, "dyn", number, seed=number)
    (repo / "dyn" / "config.pbtxt").write_text(DYNAMIC)
    for number in (1, 2, 3):
        version(repo, "latest", number, seed=10 + number)
        version(repo, "specific", number, seed=20 + number)
    (repo / "latest" / "config.pbtxt").write_text(LATEST)
    (repo / "specific" / "config.pbtxt").write_text(SPECIFIC)
    version(repo, "trt", 1, seed=30)
    (repo / "trt" / "config.pbtxt").write_text(TENSORRT)
    version(repo, "ov", 1, seed=31)
    (repo / "ov" / "config.pbtxt").write_text(OPENVINO)
    version(repo, "plain", 1, seed=40)
    (repo / "plain" / "labels.txt").write_text("cat\ndog\n")
    (repo / "ens" / "1").mkdir(parents=True)
    (repo / "ens" / "config.pbtxt").write_text(ENSEMBLE)
    (repo / "py" / "1").mkdir(parents=True)
    (repo / "py" / "1" / "model.py").write_text("class TritonPythonModel: ...\n")
    (repo / "py" / "config.pbtxt").write_text(PYTHON)
    version(repo, "broken", 1, seed=50)
    (repo / "broken" / "config.pbtxt").write_text(BROKEN)
    (repo / "README.md").write_text("a Triton repository\n")
    return repo
