"""The example models `make serve` registers on first start, built with onnx.helper."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from onnx import GraphProto, TensorProto, helper, numpy_helper

OPSET = 17


def linear_model(
    n_in: int = 16, n_out: int = 4, seed: int = 0, bias: float = 0.0, *, producer: str = "ortserve"
) -> bytes:
    """y[N, n_out] = x[N, n_in] @ W + b with W drawn from `seed`: a tiny batchable model."""
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((n_in, n_out)).astype(np.float32)
    b = np.full((n_out,), bias, dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])],
        "linear",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n_in])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", n_out])],
        [numpy_helper.from_array(w, "W"), numpy_helper.from_array(b, "b")],
    )
    return _serialize(graph, producer)


def add_model(width: int = 4) -> bytes:
    """z[N, width] = a[N, width] + b[N, width]: a model with two inputs."""
    graph = helper.make_graph(
        [helper.make_node("Add", ["a", "b"], ["z"])],
        "add",
        [
            helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", width]),
            helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", width]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, ["N", width])],
    )
    return _serialize(graph)


def _serialize(graph: GraphProto, producer: str = "ortserve") -> bytes:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name=producer)
    model.ir_version = 8
    return model.SerializeToString()


EXAMPLES: dict[str, Callable[[], bytes]] = {"linear": linear_model, "add": add_model}


def write_examples(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    paths = {}
    for name, build in EXAMPLES.items():
        path = directory / f"{name}.onnx"
        path.write_bytes(build())
        paths[name] = path
    return paths
