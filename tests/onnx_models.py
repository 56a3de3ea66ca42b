"""Tiny ONNX models built with onnx.helper for tests and examples (no downloads)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from ortserve.examples import linear_model

OPSET = 17


def _save(model: onnx.ModelProto, path: Path | None) -> bytes:
    onnx.checker.check_model(model, full_check=True)
    data = model.SerializeToString()
    if path is not None:
        path.write_bytes(data)
    return data


def _model(graph: onnx.GraphProto) -> onnx.ModelProto:
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ortserve-tests"
    )
    model.ir_version = 8
    return model


def linear(
    path: Path | None = None, n_in: int = 16, n_out: int = 4, seed: int = 0, bias: float = 0.0
) -> bytes:
    """y[N, n_out] = x[N, n_in] @ W + b, with a dynamic batch axis (the example model `linear`)."""
    data = linear_model(n_in, n_out, seed, bias, producer="ortserve-tests")
    onnx.checker.check_model(onnx.load_from_string(data), full_check=True)
    if path is not None:
        path.write_bytes(data)
    return data


def add(path: Path | None = None, elem: int = TensorProto.FLOAT, width: int = 4) -> bytes:
    """z = a + b over [N, width] of one element type."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["z"])],
        "add",
        [
            helper.make_tensor_value_info("a", elem, ["N", width]),
            helper.make_tensor_value_info("b", elem, ["N", width]),
        ],
        [helper.make_tensor_value_info("z", elem, ["N", width])],
    )
    return _save(_model(graph), path)


def identity(
    path: Path | None = None, elem: int = TensorProto.FLOAT, shape: tuple[int | str, ...] = ("N", 3)
) -> bytes:
    """y = x for any element type (strings and booleans too)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])],
        "identity",
        [helper.make_tensor_value_info("x", elem, list(shape))],
        [helper.make_tensor_value_info("y", elem, list(shape))],
    )
    return _save(_model(graph), path)


def fixed_batch(path: Path | None = None) -> bytes:
    """y[2, 3] = x * 2 with a fixed leading dimension (not batchable)."""
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "two"], ["y"])],
        "fixed",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3])],
        [numpy_helper.from_array(np.array(2.0, dtype=np.float32), "two")],
    )
    return _save(_model(graph), path)


def custom_domain(path: Path | None = None) -> bytes:
    """A node in an operator domain outside the allowlist."""
    graph = helper.make_graph(
        [helper.make_node("Evil", ["x"], ["y"], domain="com.example.evil")],
        "custom",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3])],
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid("com.example.evil", 1)],
    )
    model.ir_version = 8
    return model.SerializeToString()


def string_upper(path: Path | None = None) -> bytes:
    """y = StringUpper(x) over STRING [N], from onnxruntime-extensions' domain ai.onnx.contrib."""
    node = helper.make_node("StringUpper", ["x"], ["y"], name="upper", domain="ai.onnx.contrib")
    graph = helper.make_graph(
        [node],
        "upper",
        [helper.make_tensor_value_info("x", TensorProto.STRING, ["N"])],
        [helper.make_tensor_value_info("y", TensorProto.STRING, ["N"])],
    )
    opsets = [helper.make_opsetid("", OPSET), helper.make_opsetid("ai.onnx.contrib", 1)]
    model = helper.make_model(graph, opset_imports=opsets, producer_name="ortserve-tests")
    model.ir_version = 8
    data = model.SerializeToString()
    if path is not None:
        path.write_bytes(data)
    return data


def two_batch_names(path: Path | None = None) -> bytes:
    """ya = a, yb = b where a is [N, 3] and b is [M, 3]: dynamic axis 0 under two names (not batchable)."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["a"], ["ya"]), helper.make_node("Identity", ["b"], ["yb"])],
        "two_batch_names",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["M", 3]),
        ],
        [
            helper.make_tensor_value_info("ya", TensorProto.FLOAT, ["N", 3]),
            helper.make_tensor_value_info("yb", TensorProto.FLOAT, ["M", 3]),
        ],
    )
    return _save(_model(graph), path)


def external_data(path: Path, location: str = "weights.bin") -> bytes:
    """linear() with its weight W stored in the external file `location` next to `path`."""
    model = onnx.load_from_string(linear())
    onnx.save_model(model, str(path), save_as_external_data=True, location=location, size_threshold=0)
    return path.read_bytes()


def big_initializer(path: Path | None = None, megabytes: int = 128) -> bytes:
    """y = x + W with W a float32 initializer of `megabytes` MiB (validation needs several times that)."""
    cols = megabytes * (1 << 20) // 4 // 1024
    w = np.ones((1024, cols), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "W"], ["y"])],
        "big_initializer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1024, cols])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1024, cols])],
        [numpy_helper.from_array(w, "W")],
    )
    data = _model(graph).SerializeToString()
    if path is not None:
        path.write_bytes(data)
    return data


def gather(path: Path | None = None, width: int = 4, picks: int | str = 1) -> bytes:
    """out[N, picks] = GatherElements(data[N, width], idx[N, picks], axis=1).

    An index out of range fails at run time.
    """
    graph = helper.make_graph(
        [helper.make_node("GatherElements", ["data", "idx"], ["out"], axis=1)],
        "gather",
        [
            helper.make_tensor_value_info("data", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("idx", TensorProto.INT64, ["N", picks]),
        ],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", picks])],
    )
    return _save(_model(graph), path)


def fails_at_run(path: Path | None = None) -> bytes:
    """Valid and loadable, but every run fails: Reshape of [N, 3] to a fixed [7] (the warm-up fails)."""
    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["y"])],
        "fails",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7])],
        [numpy_helper.from_array(np.array([7], dtype=np.int64), "shape")],
    )
    return _save(_model(graph), path)
