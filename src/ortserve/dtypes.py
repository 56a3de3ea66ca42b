"""One table of tensor element types across ONNX, numpy, our API and the Open Inference Protocol.

Numpy only (no onnx import), so the client SDK can use it too.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ortserve.errors import InvalidInput


@dataclass(frozen=True, slots=True)
class DType:
    """An element type; `name` is the Open Inference Protocol's datatype string."""

    name: str
    numpy: np.dtype[np.generic]
    onnx: int
    ort: str
    itemsize: int  # 0 for variable-size strings
    wire: np.dtype[np.generic]  # as raw bytes carry it: little-endian


def _d(name: str, np_type: type, onnx_type: int, ort: str) -> DType:
    dt = np.dtype(np_type)
    fixed = dt != np.dtype(object)
    return DType(name, dt, onnx_type, ort, dt.itemsize if fixed else 0, dt.newbyteorder("<") if fixed else dt)


ALL: tuple[DType, ...] = (
    # name, numpy, onnx.TensorProto.DataType value, ONNX Runtime type string
    _d("BOOL", np.bool_, 9, "tensor(bool)"),
    _d("UINT8", np.uint8, 2, "tensor(uint8)"),
    _d("UINT16", np.uint16, 4, "tensor(uint16)"),
    _d("UINT32", np.uint32, 12, "tensor(uint32)"),
    _d("UINT64", np.uint64, 13, "tensor(uint64)"),
    _d("INT8", np.int8, 3, "tensor(int8)"),
    _d("INT16", np.int16, 5, "tensor(int16)"),
    _d("INT32", np.int32, 6, "tensor(int32)"),
    _d("INT64", np.int64, 7, "tensor(int64)"),
    _d("FP16", np.float16, 10, "tensor(float16)"),
    _d("FP32", np.float32, 1, "tensor(float)"),
    _d("FP64", np.float64, 11, "tensor(double)"),
    _d("BYTES", object, 8, "tensor(string)"),
)

BY_NAME = {d.name: d for d in ALL}
BY_ORT = {d.ort: d for d in ALL}
BYTES = BY_NAME["BYTES"]
BY_NUMPY = {d.numpy: d for d in ALL}


def by_name(name: str, what: str) -> DType:
    """The type named `name` (e.g. "FP32"); InvalidInput naming `what` otherwise."""
    try:
        return BY_NAME[name]
    except KeyError:
        known = ", ".join(BY_NAME)
        raise InvalidInput(f"{what}: unsupported datatype {name!r}; expected one of {known}") from None


def of_array(array: np.ndarray) -> DType:
    """The type of a numpy array; str and bytes arrays are BYTES."""
    found = BY_NUMPY.get(array.dtype)
    if found is not None:
        return found
    if array.dtype.kind in "OUS":
        return BYTES
    native = BY_NUMPY.get(array.dtype.newbyteorder("="))
    if native is not None:
        return native
    raise InvalidInput(f"numpy dtype {array.dtype} has no ONNX tensor type")
