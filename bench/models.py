"""The benchmark models, built with onnx.helper (random weights, fixed seed, dynamic batch axis N).

    tiny  x[N,16]        -> y[N,4]      one MatMul + Add: all transport, no compute
    mlp   x[N,256]       -> y[N,10]     256 -> 1024 relu -> 1024 relu -> 10
    cnn   x[N,3,64,64]   -> y[N,10]     4 3x3 convs (32, 64, 128, 128 ch; the last three strided) + relu,
                                        global pool, linear: ~50 MMAC per image, so compute (not
                                        transport) dominates a request
    wide  x[N,512]       -> y[N,512]    512 -> 4096 relu -> 4096 relu -> 512 (84 MB of weights:
                                        memory-bound at batch 1, so batching pays the most here)

Run `python bench/models.py DIR` to write them all as DIR/<name>.onnx.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17
IR_VERSION = 8
SEED = 20240601

# name -> (input name, input shape, output name, output shape); "N" is the batch axis
SIGNATURES: dict[str, tuple[str, list[int | str], str, list[int | str]]] = {
    "tiny": ("x", ["N", 16], "y", ["N", 4]),
    "mlp": ("x", ["N", 256], "y", ["N", 10]),
    "cnn": ("x", ["N", 3, 64, 64], "y", ["N", 10]),
    "wide": ("x", ["N", 512], "y", ["N", 512]),
}


def _finish(name: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    x, x_shape, y, y_shape = SIGNATURES[name]
    graph = helper.make_graph(
        nodes,
        f"bench_{name}",
        [helper.make_tensor_value_info(x, TensorProto.FLOAT, x_shape)],
        [helper.make_tensor_value_info(y, TensorProto.FLOAT, y_shape)],
        inits,
    )
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="ortserve-bench"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


def _weight(rng: np.random.Generator, name: str, shape: tuple[int, ...], fan_in: int) -> onnx.TensorProto:
    w = (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)
    return numpy_helper.from_array(w, name)


def _dense_stack(name: str, widths: list[int]) -> onnx.ModelProto:
    """x -> Gemm -> Relu -> ... -> Gemm -> y (no Relu after the last layer)."""
    rng = np.random.default_rng(SEED)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current = "x"
    layers = len(widths) - 1
    for i in range(layers):
        w, b = f"W{i}", f"b{i}"
        inits.append(_weight(rng, w, (widths[i], widths[i + 1]), widths[i]))
        inits.append(numpy_helper.from_array(np.zeros(widths[i + 1], np.float32), b))
        last = i == layers - 1
        out = "y" if last else f"h{i}"
        nodes.append(helper.make_node("Gemm", [current, w, b], [out if last else f"g{i}"]))
        if not last:
            nodes.append(helper.make_node("Relu", [f"g{i}"], [out]))
        current = out
    return _finish(name, nodes, inits)


def tiny() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    inits = [_weight(rng, "W", (16, 4), 16), numpy_helper.from_array(np.zeros(4, np.float32), "b")]
    nodes = [helper.make_node("MatMul", ["x", "W"], ["xw"]), helper.make_node("Add", ["xw", "b"], ["y"])]
    return _finish("tiny", nodes, inits)


def mlp() -> onnx.ModelProto:
    return _dense_stack("mlp", [256, 1024, 1024, 10])


def wide() -> onnx.ModelProto:
    return _dense_stack("wide", [512, 4096, 4096, 512])


# (output channels, stride) of the 3x3 convolutions: 64x64 -> 64 -> 32 -> 16 -> 8, about 50 MMAC per image
CNN_LAYERS = ((32, 1), (64, 2), (128, 2), (128, 2))


def cnn() -> onnx.ModelProto:
    rng = np.random.default_rng(SEED)
    nodes: list[onnx.NodeProto] = []
    inits: list[onnx.TensorProto] = []
    current, channels = "x", 3
    for i, (out_ch, stride) in enumerate(CNN_LAYERS):
        w, b = f"conv{i}_W", f"conv{i}_b"
        inits.append(_weight(rng, w, (out_ch, channels, 3, 3), channels * 9))
        inits.append(numpy_helper.from_array(np.zeros(out_ch, np.float32), b))
        conv = helper.make_node(
            "Conv",
            [current, w, b],
            [f"c{i}"],
            kernel_shape=[3, 3],
            strides=[stride, stride],
            pads=[1, 1, 1, 1],
        )
        nodes.append(conv)
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"]))
        current, channels = f"r{i}", out_ch
    nodes.append(helper.make_node("GlobalAveragePool", [current], ["pooled"]))
    nodes.append(helper.make_node("Flatten", ["pooled"], ["flat"], axis=1))
    inits.append(_weight(rng, "fc_W", (channels, 10), channels))
    inits.append(numpy_helper.from_array(np.zeros(10, np.float32), "fc_b"))
    nodes.append(helper.make_node("Gemm", ["flat", "fc_W", "fc_b"], ["y"]))
    return _finish("cnn", nodes, inits)


BUILDERS: dict[str, Callable[[], onnx.ModelProto]] = {"tiny": tiny, "mlp": mlp, "cnn": cnn, "wide": wide}


def build(name: str, directory: Path) -> Path:
    """Write one model as directory/<name>.onnx and return the path."""
    path = directory / f"{name}.onnx"
    path.write_bytes(BUILDERS[name]().SerializeToString())
    return path


def build_all(directory: Path) -> dict[str, Path]:
    directory.mkdir(parents=True, exist_ok=True)
    return {name: build(name, directory) for name in BUILDERS}


def example_input(name: str, rows: int = 1, seed: int = 0) -> np.ndarray:
    """Random float32 input of `rows` rows for a model."""
    shape = [rows if d == "N" else int(d) for d in SIGNATURES[name][1]]
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


if __name__ == "__main__":
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "bench-models")
    for model_name, model_path in build_all(out).items():
        print(f"{model_name}\t{model_path}\t{model_path.stat().st_size} bytes")
