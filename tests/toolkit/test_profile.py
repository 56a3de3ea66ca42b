"""Operator profiles of an MLP and a CNN run by ONNX Runtime's profiler in the limited subprocess."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ortserve.errors import InvalidInput, ResourceExhausted
from ortserve.runtime.validation import check_model_file
from ortserve.signature import Signature
from ortserve.toolkit import profile
from ortserve.toolkit.profile import Profile, profile_model
from ortserve.toolkit.sandbox import SandboxLimits
from tests import onnx_models

LIMITS = SandboxLimits(memory_bytes=2 << 30, timeout_s=60)
RUNS = 3


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())
    return path


def _weight(rng: np.random.Generator, name: str, *shape: int) -> onnx.TensorProto:
    return numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name)


def mlp(path: Path) -> Path:
    """x[N, 32] -> MatMul + Add + Relu -> MatMul -> y[N, 4]."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("MatMul", ["x", "W0"], ["m0"], name="dense0"),
        helper.make_node("Add", ["m0", "b0"], ["a0"], name="bias0"),
        helper.make_node("Relu", ["a0"], ["h0"], name="relu0"),
        helper.make_node("MatMul", ["h0", "W1"], ["y"], name="dense1"),
    ]
    inits = [_weight(rng, "W0", 32, 64), _weight(rng, "b0", 64), _weight(rng, "W1", 64, 4)]
    graph = helper.make_graph(
        nodes,
        "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 32])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        inits,
    )
    return _save(graph, path)


def cnn(path: Path) -> Path:
    """x[N, 3, 16, 16] -> Conv 3x3 + Relu -> global pool -> Flatten -> y[N, 8]."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node(
            "Conv", ["x", "K", "kb"], ["c"], name="conv", kernel_shape=[3, 3], pads=[1, 1, 1, 1]
        ),
        helper.make_node("Relu", ["c"], ["r"], name="relu"),
        helper.make_node("GlobalAveragePool", ["r"], ["p"], name="pool"),
        helper.make_node("Flatten", ["p"], ["y"], name="flatten"),
    ]
    graph = helper.make_graph(
        nodes,
        "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [_weight(rng, "K", 8, 3, 3, 3), _weight(rng, "kb", 8)],
    )
    return _save(graph, path)


def _signature(path: Path) -> Signature:
    return check_model_file(path).signature


def _profile(
    path: Path, work_dir: Path, samples: Mapping[str, np.ndarray] | None = None, **kwargs: Any
) -> Profile:
    options: dict[str, Any] = {"batch": 4, "runs": RUNS, "work_dir": work_dir, "limits": LIMITS, **kwargs}
    return profile_model(path, signature=_signature(path), samples=samples, **options)


def _check_figures(result: Profile) -> None:
    assert result.operators
    assert {o.calls for o in result.operators} == {RUNS}
    assert sum(o.share for o in result.operators) == pytest.approx(1.0, abs=1e-6)
    assert [o.total_us for o in result.operators] == sorted(
        (o.total_us for o in result.operators), reverse=True
    )
    assert result.mean_run_ms > 0
    assert result.providers == ("CPUExecutionProvider",)


def _events(trace: bytes) -> list[dict[str, Any]]:
    """The trace is the Chrome JSON array format Perfetto opens; its complete events nest per thread."""
    events: list[dict[str, Any]] = json.loads(trace)
    assert isinstance(events, list)
    by_thread: dict[tuple[int, int], list[dict[str, Any]]] = defaultdict(list)
    for event in events:
        assert {"name", "ph", "ts", "pid", "tid"} <= event.keys()
        if event["ph"] == "X":
            by_thread[event["pid"], event["tid"]].append(event)
    for slices in by_thread.values():
        open_ends: list[int] = []
        for event in sorted(slices, key=lambda e: (e["ts"], -e["dur"])):
            while open_ends and open_ends[-1] <= event["ts"]:
                open_ends.pop()
            assert not open_ends or event["ts"] + event["dur"] <= open_ends[-1], event
            open_ends.append(event["ts"] + event["dur"])
    return events


def test_mlp_profile(tmp_path: Path) -> None:
    result = _profile(mlp(tmp_path / "mlp.onnx"), tmp_path)
    _check_figures(result)
    assert {o.op_type for o in result.operators} & {"MatMul", "FusedMatMul", "Gemm", "FusedGemm"}
    events = _events(result.trace)
    runs = [e for e in events if e["name"] == "model_run"]
    assert len(runs) == RUNS + 1  # the warm-up run is in the trace, not in the figures
    nodes = {e["name"].removesuffix("_kernel_time") for e in events if e.get("cat") == "Node"}
    assert {o.node for o in result.operators} == nodes


def test_cnn_profile_repeats_given_samples_to_the_batch(tmp_path: Path) -> None:
    samples = {"x": np.random.default_rng(1).standard_normal((2, 3, 16, 16)).astype(np.float32)}
    result = _profile(cnn(tmp_path / "cnn.onnx"), tmp_path, samples, batch=5)
    _check_figures(result)
    assert {o.op_type for o in result.operators} & {"Conv", "FusedConv"}
    shapes = [
        e["args"]["input_type_shape"][0]["float"]
        for e in _events(result.trace)
        if e.get("cat") == "Node" and e["args"]["op_name"] in {"Conv", "FusedConv"}
    ]
    assert shapes and all(shape[0] == 5 for shape in shapes)


def test_bad_requests_name_the_cause(tmp_path: Path) -> None:
    path = mlp(tmp_path / "mlp.onnx")
    cases: list[tuple[dict[str, Any], str]] = [
        ({"runs": 0}, r"^profile runs is 0; expected 1 to 1000$"),
        ({"batch": 0}, r"^profile batch is 0; expected 1 to 1024$"),
        ({"samples": {"x": np.zeros((2, 32), np.int64)}}, r"^sample inputs: .*'x': datatype INT64"),
        (
            {"custom_op_libraries": ("/no/such/lib.so",)},
            r"^custom operator library '/no/such/lib.so' does not",
        ),
    ]
    for kwargs, message in cases:
        with pytest.raises(InvalidInput, match=message):
            _profile(path, tmp_path, **kwargs)
    _check_figures(_profile(path, tmp_path))


def test_model_that_fails_to_run_and_batch_without_a_batch_axis(tmp_path: Path) -> None:
    path = tmp_path / "fails.onnx"
    onnx_models.fails_at_run(path)
    with pytest.raises(InvalidInput, match=r"model has no batch axis, so it must be 1"):
        _profile(path, tmp_path)
    with pytest.raises(InvalidInput) as caught:
        _profile(path, tmp_path, batch=1)
    assert str(caught.value).startswith("ONNX Runtime failed to run the model on the profile inputs")
    assert "correlation id" in str(caught.value)
    assert "Reshape" not in str(caught.value)


def test_trace_over_the_limit_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(profile, "MAX_TRACE_BYTES", 1000)
    with pytest.raises(
        ResourceExhausted, match=r"trace is \d+ bytes, over the limit of 1000 bytes; ask for fewer"
    ):
        _profile(mlp(tmp_path / "mlp.onnx"), tmp_path)
