"""tritonclient.grpc 2.73, unchanged, against a real ortserve over the Open Inference Protocol.

The server runs in this process; tritonclient runs in a subprocess of .venv-triton
(scripts/triton_venv.sh) because it needs protobuf<7 and defines the same `inference.*` symbols.
tritonclient_script.py prints one JSON report; the assertions are here.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from onnx import TensorProto

from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models
from tests.triton import triton_python

SCRIPT = Path(__file__).with_name("tritonclient_script.py")
SCRIPT_TIMEOUT_S = 240

MODELS = {
    "add-fp32": lambda p: onnx_models.add(p, TensorProto.FLOAT, 4),
    "add-int64": lambda p: onnx_models.add(p, TensorProto.INT64, 4),
    "id-fp16": lambda p: onnx_models.identity(p, TensorProto.FLOAT16),
    "id-bool": lambda p: onnx_models.identity(p, TensorProto.BOOL),
    "id-bytes": lambda p: onnx_models.identity(p, TensorProto.STRING),
}


@pytest.fixture
async def server(tmp_path: Path) -> AsyncIterator[OrtServer]:
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path)))
    registry = server.parts.control.registry
    models = tmp_path / "models"
    models.mkdir()
    for name, build in MODELS.items():
        path = models / f"{name}.onnx"
        build(path)
        await asyncio.to_thread(registry.register_file, path, name)
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


@pytest.fixture
async def report(server: OrtServer, tmp_path: Path) -> dict[str, Any]:
    python = await asyncio.to_thread(triton_python)
    upload = tmp_path / "upload.onnx"
    onnx_models.add(upload, TensorProto.FLOAT, 2)
    proc = await asyncio.create_subprocess_exec(
        str(python),
        str(SCRIPT),
        "--url",
        f"127.0.0.1:{server.port}",
        "--upload",
        str(upload),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        out, err = await asyncio.wait_for(proc.communicate(), SCRIPT_TIMEOUT_S)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        pytest.fail(f"tritonclient_script.py did not finish in {SCRIPT_TIMEOUT_S} s")
    assert proc.returncode == 0, f"tritonclient_script.py failed:\n{err.decode()[-4000:]}"
    result: dict[str, Any] = json.loads(out)
    return result


async def test_tritonclient_against_ortserve(report: dict[str, Any]) -> None:
    """One server, one client run; each section below checks one part of the protocol."""
    check_health(report["health"])
    check_metadata(report["metadata"])
    check_inference(report["infer"])
    check_stream(report["stream"])
    check_statistics(report["statistics"])
    check_errors(report["errors"])
    check_repository(report["repository"])
    check_shared_memory(report["shared_memory"])


def check_health(health: dict[str, Any]) -> None:
    assert health["live"] is True
    assert health["ready"] is True
    assert health["server_name"] == "ortserve"
    assert health["server_version"]
    assert {"model_repository", "model_configuration", "statistics", "system_shared_memory"} <= set(
        health["extensions"]
    )
    assert health["model_ready"] is True
    assert health["model_ready_v1"] is True
    assert health["model_ready_v9"] is False
    assert health["unknown_model_ready"] is False


def check_metadata(section: dict[str, Any]) -> None:
    meta, config = section["metadata"], section["config"]
    assert meta["name"] == "add-fp32"
    assert meta["versions"] == ["1"]
    assert meta["platform"] == "onnxruntime_onnx"
    assert [(t["name"], t["datatype"], t["shape"]) for t in meta["inputs"]] == [
        ("a", "FP32", ["-1", "4"]),
        ("b", "FP32", ["-1", "4"]),
    ]
    assert [(t["name"], t["datatype"]) for t in meta["outputs"]] == [("z", "FP32")]
    assert config["name"] == "add-fp32"
    assert config["platform"] == "onnxruntime_onnx"
    assert config["backend"] == "onnxruntime"
    assert config["max_batch_size"] > 0
    assert [(i["name"], i["data_type"], i["dims"]) for i in config["input"]] == [
        ("a", "TYPE_FP32", ["4"]),
        ("b", "TYPE_FP32", ["4"]),
    ]
    assert config["instance_group"][0]["kind"] in ("KIND_CPU", "KIND_GPU")
    assert "dynamic_batching" in config
    assert "CPUExecutionProvider" in config["parameters"]["execution_providers"]["string_value"]


def check_inference(infer: dict[str, Any]) -> None:
    fp32 = infer["fp32"]
    assert fp32["equal"], fp32
    assert (fp32["shape"], fp32["datatype"], fp32["id"], fp32["model_version"]) == (
        [3, 4],
        "FP32",
        "add-fp32-1",
        "1",
    )
    assert fp32["params"]["ortserve_version"] == 1
    assert fp32["params"]["ortserve_batch_size"] == 3
    assert {"ortserve_queue_us", "ortserve_compute_us", "ortserve_provider"} <= set(fp32["params"])
    assert infer["int64"]["equal"], infer["int64"]
    assert infer["int64"]["datatype"] == "INT64"
    for name, datatype in (("fp16", "FP16"), ("bool", "BOOL"), ("bytes", "BYTES")):
        assert infer[name]["equal"], (name, infer[name])
        assert infer[name]["datatype"] == datatype


def check_stream(stream: dict[str, Any]) -> None:
    answers = stream["answers"]
    assert stream["extra_answers"] == 0
    assert "no-such-model" in answers[3]["error"]
    ok = [a for i, a in enumerate(answers) if i != 3]
    assert [a["id"] for a in ok] == [f"s{i}" for i in range(8) if i != 3]
    assert all(a["equal"] for a in ok), ok
    assert answers[5]["final"] is True


def check_statistics(stats: dict[str, Any]) -> None:
    (add,) = stats["add_fp32"]
    assert add["name"] == "add-fp32"
    assert add["version"] == "1"
    # 1 infer + 7 good stream requests
    assert int(add["inference_count"]) >= 8
    # the batcher may run several stream requests as one execution
    assert 1 <= int(add["execution_count"]) <= int(add["inference_count"])
    assert int(add["inference_stats"]["success"]["count"]) >= 8
    assert int(add["last_inference"]) > 0
    assert add["batch_stats"]
    assert set(MODELS) <= set(stats["all_names"])


def check_errors(errors: dict[str, Any]) -> None:
    assert errors["unknown_model"]["raised"]
    assert errors["unknown_model"]["status"] == "StatusCode.NOT_FOUND"
    assert "no-such-model" in errors["unknown_model"]["message"]
    assert errors["wrong_datatype"]["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "FP64" in errors["wrong_datatype"]["message"]
    assert errors["unknown_version"]["status"] == "StatusCode.NOT_FOUND"
    assert errors["metadata_unknown"]["status"] == "StatusCode.NOT_FOUND"


def check_repository(repo: dict[str, Any]) -> None:
    index = {(m["name"], m["version"]): m["state"] for m in repo["index"]}
    assert index == {(name, "1"): "READY" for name in MODELS}
    assert repo["ready_after_unload"] is False
    assert repo["infer_unloaded"]["status"] == "StatusCode.FAILED_PRECONDITION"
    assert repo["ready_after_load"] is True
    assert repo["reloaded"]["equal"]
    for key in ("uploaded_latest", "uploaded_v2"):
        assert repo[key]["equal"], repo[key]
        assert repo[key]["model_version"] == "2"
        assert repo[key]["shape"] == [2, 2]
    assert repo["old_v1_ready"] is True
    after = {(m["name"], m["version"]): m["state"] for m in repo["index_after_upload"]}
    assert after[("add-fp32", "2")] == "READY"


def check_shared_memory(section: dict[str, Any]) -> None:
    regions = section["status"]["regions"]
    assert set(regions) == {"in", "out"}
    assert regions["in"]["key"].endswith("-in")
    assert int(regions["in"]["byte_size"]) == 64
    assert section["equal"] is True  # z = a + b read back from the output region
    assert section["raw_outputs"] == 0  # an output written into a region is not sent over gRPC
    assert section["mixed_equal"] is True
    after = section["after_unregister"]
    assert after["status"] == "StatusCode.INVALID_ARGUMENT"
    assert "shared memory region 'in' is not registered" in after["message"]
    assert section["status_after"].get("regions", {}) == {}
