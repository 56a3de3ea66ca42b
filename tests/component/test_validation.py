"""Model validation in a memory-limited subprocess, on real ONNX models and ONNX Runtime."""

from __future__ import annotations

from pathlib import Path

import pytest
from onnx import TensorProto

from ortserve import dtypes
from ortserve.errors import InvalidInput, ResourceExhausted
from ortserve.runtime.validation import ValidationLimits, check_model_file, validate_model
from tests import onnx_models
from tests.patterns import LOGGED


def test_linear_signature(linear_path: Path) -> None:
    info = validate_model(linear_path)
    assert info.opset == 17
    assert info.producer == "ortserve-tests"
    sig = info.signature
    assert [(s.name, s.dtype.name, s.shape) for s in sig.inputs] == [("x", "FP32", (-1, 16))]
    assert [(s.name, s.dtype.name, s.shape) for s in sig.outputs] == [("y", "FP32", (-1, 4))]
    assert sig.batch_axis


@pytest.mark.parametrize(
    ("elem", "name"),
    [
        (TensorProto.FLOAT, "FP32"),
        (TensorProto.DOUBLE, "FP64"),
        (TensorProto.FLOAT16, "FP16"),
        (TensorProto.INT64, "INT64"),
        (TensorProto.INT8, "INT8"),
        (TensorProto.UINT8, "UINT8"),
        (TensorProto.BOOL, "BOOL"),
        (TensorProto.STRING, "BYTES"),
    ],
)
def test_dtypes_come_from_onnx_runtime(tmp_path: Path, elem: int, name: str) -> None:
    path = tmp_path / "identity.onnx"
    onnx_models.identity(path, elem=elem)
    info = check_model_file(path)
    assert info.signature.inputs[0].dtype is dtypes.BY_NAME[name]
    assert info.signature.outputs[0].dtype is dtypes.BY_NAME[name]


@pytest.mark.parametrize(
    ("build", "batch_axis", "input_shape"),
    [
        (lambda p: onnx_models.identity(p, shape=("N", 3)), True, (-1, 3)),
        (lambda p: onnx_models.identity(p, shape=(None, "H", 5)), True, (-1, -1, 5)),
        (onnx_models.fixed_batch, False, (2, 3)),
        (lambda p: onnx_models.identity(p, shape=()), False, ()),
        (lambda p: onnx_models.identity(p, shape=(3, "N")), False, (3, -1)),
        (onnx_models.two_batch_names, False, (-1, 3)),
        (onnx_models.add, True, (-1, 4)),
    ],
)
def test_batch_axis_and_dynamic_dims(
    tmp_path: Path, build: object, batch_axis: bool, input_shape: tuple[int, ...]
) -> None:
    path = tmp_path / "model.onnx"
    build(path)  # type: ignore[operator]
    sig = check_model_file(path).signature
    assert sig.inputs[0].shape == input_shape
    assert sig.batch_axis is batch_axis


def test_corrupt_bytes_are_rejected(tmp_path: Path) -> None:
    path = tmp_path / "junk.onnx"
    path.write_bytes(b"\x08\x01this is not protobuf\xff\xff\xff")
    with pytest.raises(
        InvalidInput,
        match=r"^model bytes are not a valid ONNX model" + LOGGED,
    ):
        validate_model(path)


def test_custom_domain_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "custom.onnx"
    path.write_bytes(onnx_models.custom_domain())
    with pytest.raises(
        InvalidInput,
        match=r"^operator domain 'com.example.evil' \(node 'Evil'\) is not allowed; allowed: '', 'ai.onnx'",
    ):
        validate_model(path)


def test_external_data_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "external.onnx"
    onnx_models.external_data(path, location="weights.bin")
    with pytest.raises(
        InvalidInput,
        match=r"tensor 'W' \(initializer of graph 'linear'\) keeps its data in the external file "
        r"'weights.bin'",
    ):
        validate_model(path)


def test_checker_failure_is_rejected(tmp_path: Path) -> None:
    import onnx

    model = onnx.load_from_string(onnx_models.linear())
    model.graph.node[0].input[1] = "missing"
    path = tmp_path / "broken.onnx"
    path.write_bytes(model.SerializeToString())
    with pytest.raises(InvalidInput, match=r"^model fails the ONNX checker: .*missing"):
        validate_model(path)


def test_too_large_is_resource_exhausted(linear_path: Path) -> None:
    with pytest.raises(ResourceExhausted, match=r"model file is 414 bytes; the limit is 100 bytes"):
        validate_model(linear_path, ValidationLimits(max_model_bytes=100))


def test_memory_limit_turns_into_invalid_input(tmp_path: Path, linear_path: Path) -> None:
    path = tmp_path / "big.onnx"
    onnx_models.big_initializer(path, megabytes=128)
    limits = ValidationLimits(memory_bytes=450 << 20)
    with pytest.raises(InvalidInput, match=r"model validation exceeded its memory limit of 471859200 bytes"):
        validate_model(path, limits)
    assert validate_model(linear_path, limits).opset == 17  # the limit itself leaves room for a small model


def test_timeout_turns_into_invalid_input(linear_path: Path) -> None:
    with pytest.raises(InvalidInput, match=r"^model validation timed out after 0.01 s$"):
        validate_model(linear_path, ValidationLimits(timeout_s=0.01))
