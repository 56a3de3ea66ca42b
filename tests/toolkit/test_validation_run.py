"""Validation creates the session and runs one inference in the limited child (issue 10, item 8)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from ortserve.errors import InvalidInput
from ortserve.runtime.validation import ValidationLimits, validate_model
from tests import onnx_models
from tests.patterns import LOGGED

GiB = 1 << 30
LIMIT = ValidationLimits(memory_bytes=GiB, timeout_s=60)


def allocates_at_run(path: Path) -> None:
    """y = x + sum(ones(shape(x) * [2^20, 2^9])): 8 GiB of float32 per row, sized only at run time."""
    ones = numpy_helper.from_array(np.ones(1, np.float32))
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "k"], ["big_shape"]),
        helper.make_node("ConstantOfShape", ["big_shape"], ["big"], value=ones),
        helper.make_node("ReduceSum", ["big"], ["t"], keepdims=0),
        helper.make_node("Add", ["x", "t"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "allocates_at_run",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])],
        [numpy_helper.from_array(np.array([1 << 20, 1 << 9], np.int64), "k")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    path.write_bytes(model.SerializeToString())


def test_a_run_allocating_past_the_limit_is_refused_naming_it(tmp_path: Path, linear_path: Path) -> None:
    path = tmp_path / "huge.onnx"
    allocates_at_run(path)
    limit = r"^model validation exceeded its memory limit of 1073741824 bytes: the model fails to run on "
    with pytest.raises(InvalidInput, match=limit + r"generated inputs \(batch 1\)" + LOGGED):
        validate_model(path, LIMIT)
    samples = {"x": np.ones((2, 4), np.float32)}
    with pytest.raises(InvalidInput, match=limit + "the sample inputs" + LOGGED):
        validate_model(path, LIMIT, samples=samples)
    info = validate_model(linear_path, LIMIT, samples={"x": np.ones((3, 16), np.float32)})
    assert [s.name for s in info.signature.inputs] == ["x"]


def test_samples_must_match_and_run(tmp_path: Path, linear_path: Path) -> None:
    with pytest.raises(
        InvalidInput, match=r"^sample inputs: input 'x': datatype FP64 does not match the expected FP32$"
    ):
        validate_model(linear_path, LIMIT, samples={"x": np.ones((3, 16))})
    fails = tmp_path / "fails.onnx"
    onnx_models.fails_at_run(fails)
    with pytest.raises(InvalidInput, match=r"^the model fails to run on the sample inputs" + LOGGED):
        validate_model(fails, LIMIT, samples={"x": np.ones((2, 16), np.float32)})
    # Without samples a run failure is not the model's fault (generated values); only memory is refused.
    assert validate_model(fails, LIMIT).producer == "ortserve-tests"
