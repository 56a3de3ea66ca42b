"""Derived versions (optimize, quantize, fp16) built and evaluated in the sandbox, on real ONNX Runtime."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from ortserve import dtypes
from ortserve.errors import FailedPrecondition, InvalidInput
from ortserve.runtime.validation import check_model_file
from ortserve.signature import Signature, TensorSpec
from ortserve.toolkit.derive import GENERATED_ROWS, Derived, derive_model
from ortserve.toolkit.recipes import Fp16, Optimize, Quantize, Recipe
from ortserve.toolkit.report import EvaluationReport
from ortserve.toolkit.sandbox import SandboxLimits
from tests import onnx_models
from tests.patterns import LOGGED

LIMITS = SandboxLimits(timeout_s=60)
Arrays = dict[str, np.ndarray]


def _model(
    name: str, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], x: list[int | str]
) -> bytes:
    graph = helper.make_graph(
        nodes,
        name,
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name="tests")
    model.ir_version = 8
    onnx.checker.check_model(model, full_check=True)
    return model.SerializeToString()


def _weight(rng: np.random.Generator, name: str, shape: tuple[int, ...]) -> onnx.TensorProto:
    fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[0]
    return numpy_helper.from_array((rng.standard_normal(shape) / np.sqrt(fan_in)).astype(np.float32), name)


def mlp() -> bytes:
    """x[N,64] -> 256 relu -> 256 relu -> 10 softmax, as MatMul + Add (real 256x256 weights)."""
    rng = np.random.default_rng(7)
    widths = [64, 256, 256, 10]
    nodes, inits, current = [], [], "x"
    for i in range(3):
        inits += [
            _weight(rng, f"W{i}", (widths[i], widths[i + 1])),
            numpy_helper.from_array(np.zeros(widths[i + 1], np.float32), f"b{i}"),
        ]
        nodes += [
            helper.make_node("MatMul", [current, f"W{i}"], [f"m{i}"]),
            helper.make_node("Add", [f"m{i}", f"b{i}"], [f"a{i}"]),
        ]
        current = f"a{i}"
        if i < 2:
            nodes.append(helper.make_node("Relu", [current], [f"r{i}"]))
            current = f"r{i}"
    nodes.append(helper.make_node("Softmax", [current], ["y"], axis=-1))
    return _model("mlp", nodes, inits, ["N", 64])


def cnn() -> bytes:
    """x[N,3,16,16] -> conv 16 relu -> conv 32 stride 2 relu -> global pool -> Gemm 10."""
    rng = np.random.default_rng(8)
    nodes, inits, current, channels = [], [], "x", 3
    for i, (out, stride) in enumerate(((16, 1), (32, 2))):
        inits += [
            _weight(rng, f"C{i}", (out, channels, 3, 3)),
            numpy_helper.from_array(np.zeros(out, np.float32), f"c{i}"),
        ]
        nodes += [
            helper.make_node(
                "Conv", [current, f"C{i}", f"c{i}"], [f"v{i}"], pads=[1, 1, 1, 1], strides=[stride] * 2
            ),
            helper.make_node("Relu", [f"v{i}"], [f"r{i}"]),
        ]
        current, channels = f"r{i}", out
    inits += [_weight(rng, "F", (channels, 10)), numpy_helper.from_array(np.zeros(10, np.float32), "f")]
    nodes += [
        helper.make_node("GlobalAveragePool", [current], ["p"]),
        helper.make_node("Flatten", ["p"], ["flat"]),
        helper.make_node("Gemm", ["flat", "F", "f"], ["y"]),
    ]
    return _model("cnn", nodes, inits, ["N", 3, 16, 16])


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, tuple[Path, Signature]]:
    root = tmp_path_factory.mktemp("sources")
    out = {}
    for name, build in (("mlp", mlp), ("cnn", cnn)):
        path = root / f"{name}.onnx"
        path.write_bytes(build())
        out[name] = (path, check_model_file(path).signature)
    return out


def _inputs(name: str, rows: int, seed: int) -> Arrays:
    shape = (rows, 64) if name == "mlp" else (rows, 3, 16, 16)
    return {"x": np.random.default_rng(seed).standard_normal(shape).astype(np.float32)}


def _derive(
    models: dict[str, tuple[Path, Signature]],
    name: str,
    recipe: Recipe,
    work: Path,
    *,
    samples: Arrays | None = None,
    calibration: Arrays | None = None,
) -> Derived:
    source, signature = models[name]
    work.mkdir()
    return derive_model(
        source,
        recipe,
        signature=signature,
        samples=samples,
        calibration=calibration,
        work_dir=work,
        limits=LIMITS,
    )


def _ops(path: Path) -> set[str]:
    """The derived model's operator types, once it passes the checks registration applies."""
    check_model_file(path)
    return {node.op_type for node in onnx.load(str(path)).graph.node}


def _check_latency(report: EvaluationReport) -> None:
    assert 0 < report.source_latency_ms_batch1 < report.source_latency_ms_batch32
    assert report.latency_ratio_batch1 > 0
    assert report.latency_ratio_batch32 > 0


def test_quantize_dynamic_mlp_on_generated_samples(models: dict, tmp_path: Path) -> None:
    derived = _derive(models, "mlp", Quantize(mode="dynamic", per_channel=True), tmp_path / "w")
    assert derived.path.parent == tmp_path / "w"
    assert {"DynamicQuantizeLinear", "MatMulInteger"} <= _ops(derived.path)
    session = ort.InferenceSession(str(derived.path), providers=["CPUExecutionProvider"])
    assert session.run(None, _inputs("mlp", 2, 0))[0].shape == (2, 10)
    report = derived.report
    assert (report.samples, report.sample_rows, report.gate) == ("generated", GENERATED_ROWS, None)
    assert report.size_ratio < 0.35  # int8 weights: about a quarter of float32
    [y] = report.outputs
    assert y.name == "y"
    assert 0 < y.mean_abs_diff <= y.max_abs_diff < 0.05  # softmax probabilities
    assert y.argmax_agreement is not None and 0.8 <= y.argmax_agreement <= 1.0
    _check_latency(report)


def test_quantize_static_cnn_with_calibration_and_given_samples(models: dict, tmp_path: Path) -> None:
    recipe = Quantize(mode="static", per_channel=True)
    derived = _derive(
        models, "cnn", recipe, tmp_path / "w", samples=_inputs("cnn", 8, 1), calibration=_inputs("cnn", 40, 2)
    )
    assert {"QuantizeLinear", "DequantizeLinear", "Conv"} <= _ops(derived.path)
    ort.InferenceSession(str(derived.path), providers=["CPUExecutionProvider"])
    report = derived.report
    assert (report.samples, report.sample_rows) == ("given", 8)
    assert report.size_ratio < 0.5
    [y] = report.outputs
    assert 0 < y.max_abs_diff < 0.2
    assert y.argmax_agreement is not None and 0.5 <= y.argmax_agreement <= 1.0
    _check_latency(report)


def test_static_calibrates_on_the_samples_and_mismatched_calibration_is_refused(
    models: dict, tmp_path: Path
) -> None:
    static = Quantize(mode="static")
    bad = {"x": np.zeros((4, 65), np.float32)}
    with pytest.raises(
        InvalidInput, match=r"^calibration inputs: input 'x': shape \[4, 65\] does not match the expected"
    ):
        _derive(models, "mlp", static, tmp_path / "bad", samples=_inputs("mlp", 4, 0), calibration=bad)
    with pytest.raises(
        InvalidInput,
        match=r"^calibration inputs: input 'x': datatype FP64 does not match the expected FP32$",
    ):
        _derive(models, "mlp", static, tmp_path / "f64", calibration={"x": np.zeros((4, 64))})
    with pytest.raises(
        InvalidInput,
        match=r"^static quantization needs calibration inputs \(--calibration FILE.npz\) or sample "
        r"inputs stored with the source version$",
    ):
        _derive(models, "mlp", static, tmp_path / "none")
    with pytest.raises(
        InvalidInput, match=r"^calibration inputs are used by static quantization only, not by fp16$"
    ):
        _derive(models, "mlp", Fp16(), tmp_path / "fp16", calibration=_inputs("mlp", 4, 0))
    derived = _derive(models, "mlp", static, tmp_path / "good", samples=_inputs("mlp", 24, 3))
    assert "QuantizeLinear" in _ops(derived.path)
    assert (derived.report.samples, derived.report.sample_rows) == ("given", 24)
    assert derived.report.outputs[0].max_abs_diff < 0.05


def test_optimize_extended_and_simplify_cnn(models: dict, tmp_path: Path) -> None:
    derived = _derive(models, "cnn", Optimize(level="extended", simplify=True), tmp_path / "w")
    assert "FusedConv" in _ops(derived.path) and "Conv" not in _ops(derived.path)
    report = derived.report
    assert 0.9 < report.size_ratio < 1.1
    [y] = report.outputs
    assert y.max_abs_diff < 1e-4
    assert y.argmax_agreement == 1.0
    _check_latency(report)


def test_fp16_with_fp16_io_mlp_then_quantizing_it_is_refused(models: dict, tmp_path: Path) -> None:
    derived = _derive(models, "mlp", Fp16(fp16_io=True), tmp_path / "w")
    assert "Cast" not in _ops(derived.path)
    session = ort.InferenceSession(str(derived.path), providers=["CPUExecutionProvider"])
    assert [i.type for i in session.get_inputs()] == ["tensor(float16)"]
    report = derived.report
    assert 0.45 < report.size_ratio < 0.55
    [y] = report.outputs
    assert 0 < y.max_abs_diff < 5e-3
    assert y.argmax_agreement is not None and y.argmax_agreement >= 0.9
    _check_latency(report)

    kept_io = _derive(models, "mlp", Fp16(), tmp_path / "kept")
    assert "Cast" in _ops(kept_io.path)
    signature = models["mlp"][1]  # float32 inputs and outputs, float16 inside
    with pytest.raises(
        InvalidInput,
        match=r"^quantize dynamic: the quantizer found nothing to quantize in the model \(it quantizes "
        r"float32 operators such as MatMul, Gemm and Conv with constant weights\)$",
    ):
        derive_model(
            kept_io.path,
            Quantize(mode="dynamic"),
            signature=signature,
            samples=None,
            calibration=None,
            work_dir=kept_io.path.parent,
            limits=LIMITS,
        )
    assert _derive(models, "mlp", Quantize(mode="dynamic"), tmp_path / "q").report.size_ratio < 0.35


def test_simplify_without_onnxslim_a_source_failing_on_generated_samples_and_timeouts_are_refused(
    models: dict, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with monkeypatch.context() as patch:
        patch.setitem(sys.modules, "onnxslim", None)  # import (and find_spec) see no onnxslim
        with pytest.raises(
            FailedPrecondition, match=r"^optimize --simplify needs onnxslim: install ortserve\[toolkit\]$"
        ):
            _derive(models, "mlp", Optimize(simplify=True), tmp_path / "slim")
    source, signature = models["mlp"]
    with pytest.raises(InvalidInput, match=r"^derivation \(optimize basic\) timed out after 0.01 s$"):
        derive_model(
            source,
            Optimize(level="basic"),
            signature=signature,
            samples=None,
            calibration=None,
            work_dir=tmp_path,
            limits=SandboxLimits(timeout_s=0.01),
        )
    gather = tmp_path / "gather.onnx"
    onnx_models.gather(gather, width=4)  # generated indices (0..9) fall outside the 4 columns
    with pytest.raises(
        InvalidInput,
        match=r"^optimize basic: the source model fails to run on the generated sample inputs" + LOGGED,
    ):
        derive_model(
            gather,
            Optimize(level="basic"),
            signature=check_model_file(gather).signature,
            samples=None,
            calibration=None,
            work_dir=tmp_path,
            limits=LIMITS,
        )


def test_custom_operator_libraries_are_registered_in_the_child(tmp_path: Path) -> None:
    extensions = pytest.importorskip("onnxruntime_extensions")
    source = tmp_path / "upper.onnx"
    onnx_models.string_upper(source)
    libraries = (extensions.get_library_path(),)
    text = dtypes.BY_NAME["BYTES"]
    signature = Signature((TensorSpec("x", text, (-1,)),), (TensorSpec("y", text, (-1,)),), True)

    def derive(recipe: Recipe, work: str, libraries: tuple[str, ...]) -> Derived:
        (tmp_path / work).mkdir()
        return derive_model(
            source,
            recipe,
            signature=signature,
            samples=None,
            calibration=None,
            work_dir=tmp_path / work,
            limits=LIMITS,
            custom_op_libraries=libraries,
        )

    with pytest.raises(
        InvalidInput, match=r"^optimize basic: ONNX Runtime cannot optimize the model" + LOGGED
    ):
        derive(Optimize(level="basic"), "without", ())
    with pytest.raises(InvalidInput, match=r"^quantize dynamic: the quantizer found nothing to quantize"):
        derive(Quantize(mode="dynamic"), "quantize", libraries)
    with pytest.raises(InvalidInput, match=r"^fp16: the model has no float32 tensor to convert"):
        derive(Fp16(), "fp16", libraries)
    report = derive(Optimize(level="basic"), "with", libraries).report
    assert (report.samples, report.sample_rows) == ("generated", GENERATED_ROWS)
    assert [(o.name, o.max_abs_diff, o.argmax_agreement) for o in report.outputs] == [("y", 0.0, None)]
