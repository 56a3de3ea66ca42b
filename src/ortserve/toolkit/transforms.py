"""The recipes themselves, with ONNX Runtime's own tools; run inside the sandbox's child only.

optimize: a CPU session with `optimized_model_filepath` at the basic or extended level, then onnxslim.
quantize: `quant_pre_process` (shape inference; its graph optimization is ours, so that custom
operator libraries are registered), then `quantize_dynamic`, or `quantize_static` in QDQ format
calibrated (MinMax) on the given arrays; a model with nothing to quantize is refused.
fp16: `onnxruntime.transformers.float16`.

Any failure of a tool becomes `sandbox.Detailed`: a message naming the recipe and the step, with the
library's text for the parent's log.
"""

from __future__ import annotations

import tempfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import numpy as np
import onnx
import onnxruntime as ort

from ortserve.errors import InvalidInput
from ortserve.toolkit.recipes import Fp16, Optimize, Quantize, Recipe, describe
from ortserve.toolkit.sandbox import Detailed

_LEVELS = {
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
}
# Rows per calibration run of a batched model (MinMax keeps the extremes across runs).
CALIBRATION_CHUNK = 16
T = TypeVar("T")


def session_options(custom_op_libraries: Sequence[str]) -> ort.SessionOptions:
    """SessionOptions with every custom operator library registered."""
    options = ort.SessionOptions()
    for library in custom_op_libraries:
        options.register_custom_ops_library(library)
    return options


def apply(
    recipe: Recipe,
    source: Path,
    target: Path,
    *,
    calibration: Mapping[str, np.ndarray] | None,
    batch_axis: bool,
    custom_op_libraries: Sequence[str],
) -> None:
    """Write the derived model of `source` under `recipe` to `target`."""
    match recipe:
        case Optimize():
            _optimize(recipe, source, target, custom_op_libraries)
        case Quantize():
            _quantize(
                recipe,
                source,
                target,
                calibration=calibration,
                batch_axis=batch_axis,
                libraries=custom_op_libraries,
            )
        case Fp16():
            _fp16(recipe, source, target)


def step(recipe: Recipe, what: str, call: Callable[[], T]) -> T:
    """Run one step of a tool; its failure becomes Detailed "<recipe>: <what>"."""
    try:
        return call()
    except (Detailed, MemoryError):
        raise
    except Exception as exc:  # the tools raise anything from ValueError to ORT's own types
        raise Detailed(f"{describe(recipe)}: {what}", exc) from None


def _optimize(recipe: Optimize, source: Path, target: Path, libraries: Sequence[str]) -> None:
    step(
        recipe,
        "ONNX Runtime cannot optimize the model",
        lambda: _ort_optimize(source, target, recipe.level, libraries),
    )
    if recipe.simplify:
        step(recipe, "onnxslim cannot simplify the model", lambda: _slim(target))


def _ort_optimize(source: Path, target: Path, level: str, libraries: Sequence[str]) -> None:
    options = session_options(libraries)
    options.graph_optimization_level = _LEVELS[level]
    options.optimized_model_filepath = str(target)
    ort.InferenceSession(str(source), options, providers=["CPUExecutionProvider"])


def _slim(path: Path) -> None:
    import onnxslim

    onnx.save(onnxslim.slim(str(path)), str(path))


def _quantize(
    recipe: Quantize,
    source: Path,
    target: Path,
    *,
    calibration: Mapping[str, np.ndarray] | None,
    batch_axis: bool,
    libraries: Sequence[str],
) -> None:
    with tempfile.TemporaryDirectory(prefix="ortserve-quantize-") as tmp:
        prepared = _prepare(recipe, source, Path(tmp), libraries)
        if recipe.mode == "dynamic":
            _quantize_dynamic(recipe, prepared, target)
        else:
            assert calibration is not None  # derive_model refuses static without calibration arrays
            _quantize_static(recipe, prepared, target, _CalibrationReader(calibration, batch_axis))
    if _int8_initializers(target) <= _int8_initializers(source):
        raise InvalidInput(
            f"{describe(recipe)}: the quantizer found nothing to quantize in the model (it quantizes "
            "float32 operators such as MatMul, Gemm and Conv with constant weights)"
        )


def _int8_initializers(path: Path) -> int:
    graph = onnx.load(str(path), load_external_data=False).graph
    return sum(t.data_type in (onnx.TensorProto.INT8, onnx.TensorProto.UINT8) for t in graph.initializer)


def _quantize_dynamic(recipe: Quantize, prepared: Path, target: Path) -> None:
    from onnxruntime.quantization import quantize_dynamic

    weights = _dynamic_weight_type(prepared)
    step(
        recipe,
        "the quantizer cannot handle the model",
        lambda: quantize_dynamic(prepared, target, per_channel=recipe.per_channel, weight_type=weights),
    )


def _quantize_static(recipe: Quantize, prepared: Path, target: Path, reader: _CalibrationReader) -> None:
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    step(
        recipe,
        "the quantizer cannot calibrate or quantize the model",
        lambda: quantize_static(
            prepared,
            target,
            reader,
            quant_format=QuantFormat.QDQ,
            per_channel=recipe.per_channel,
            activation_type=QuantType.QInt8,
            weight_type=QuantType.QInt8,
        ),
    )


def _prepare(recipe: Quantize, source: Path, tmp: Path, libraries: Sequence[str]) -> Path:
    """Basic graph optimization (with the custom operator libraries) and ONNX shape inference, which
    gives the quantizer the types it needs; ONNX Runtime's symbolic shape inference is skipped (it
    needs sympy and imports onnxruntime.tools, 1.7 s here, for shapes the quantizer does not need)."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    optimized, prepared = tmp / "optimized.onnx", tmp / "prepared.onnx"
    step(
        recipe,
        "ONNX Runtime cannot optimize the model before quantization",
        lambda: _ort_optimize(source, optimized, "basic", libraries),
    )
    step(
        recipe,
        "shape inference before quantization fails on the model",
        lambda: quant_pre_process(
            str(optimized), str(prepared), skip_optimization=True, skip_symbolic_shape=True
        ),
    )
    return prepared


def _dynamic_weight_type(path: Path) -> Any:
    """int8 weights (U8S8 MatMulInteger) except for convolutions, whose ConvInteger kernel is only
    fast with uint8 weights on x86: measured here (AVX-512 VNNI), the int8-weight cnn took 4.4x the
    time of the uint8 one at batch 1, and the uint8-weight mlp 2x the int8 one at batch 32."""
    from onnxruntime.quantization import QuantType

    graph = onnx.load(str(path), load_external_data=False).graph
    has_conv = any(node.op_type == "Conv" for node in graph.node)
    return QuantType.QUInt8 if has_conv else QuantType.QInt8


class _CalibrationReader:
    """The calibration arrays as ONNX Runtime's CalibrationDataReader (anything with `get_next`)."""

    def __init__(self, arrays: Mapping[str, np.ndarray], batch_axis: bool) -> None:
        self._feeds = _chunks(arrays, batch_axis)

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def _chunks(arrays: Mapping[str, np.ndarray], batch_axis: bool) -> Iterator[dict[str, np.ndarray]]:
    if not batch_axis:
        yield dict(arrays)
        return
    rows = next(iter(arrays.values())).shape[0]
    for start in range(0, rows, CALIBRATION_CHUNK):
        yield {name: a[start : start + CALIBRATION_CHUNK] for name, a in arrays.items()}


def _fp16(recipe: Fp16, source: Path, target: Path) -> None:
    from onnxruntime.transformers.float16 import convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    def convert() -> bool:
        model = onnx.load(str(source), load_external_data=False)
        converted = convert_float_to_float16(model, keep_io_types=not recipe.fp16_io)
        if converted.graph == model.graph:
            return False
        OnnxModel(converted).topological_sort()  # the converter appends the inputs' Cast nodes last
        onnx.save(converted, str(target))
        return True

    if not step(recipe, "the fp16 converter cannot handle the model", convert):
        raise InvalidInput(
            f"{describe(recipe)}: the model has no float32 tensor to convert (its inputs, outputs, "
            "weights and operators use other types)"
        )
