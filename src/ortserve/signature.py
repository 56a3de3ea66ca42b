"""Model signatures: what a version takes and returns, and checking requests against it."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np

from ortserve import dtypes
from ortserve.dtypes import DType
from ortserve.errors import InvalidInput, ResourceExhausted


@dataclass(frozen=True, slots=True)
class TensorSpec:
    """One input or output; -1 in `shape` is a dimension of variable size."""

    name: str
    dtype: DType
    shape: tuple[int, ...]

    def to_json(self) -> dict[str, Any]:
        return {"name": self.name, "datatype": self.dtype.name, "shape": list(self.shape)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> TensorSpec:
        return cls(data["name"], dtypes.BY_NAME[data["datatype"]], tuple(data["shape"]))


@dataclass(frozen=True, slots=True)
class Signature:
    """Inputs and outputs; `batch_axis` when axis 0 of all of them is one dynamic batch dimension."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    batch_axis: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "batch_axis": self.batch_axis,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Signature:
        return cls(
            tuple(TensorSpec.from_json(s) for s in data["inputs"]),
            tuple(TensorSpec.from_json(s) for s in data["outputs"]),
            bool(data["batch_axis"]),
        )

    def input(self, name: str, model: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        expected = ", ".join(s.name for s in self.inputs)
        raise InvalidInput(f"model {model!r} has no input {name!r}; expected inputs: {expected}")

    def output_names(self) -> tuple[str, ...]:
        return tuple(s.name for s in self.outputs)


def check_feeds(signature: Signature, feeds: Mapping[str, np.ndarray], model: str, max_bytes: int = 0) -> int:
    """Validate names, dtypes, shapes and total size of `feeds`; return the batch size (rows on axis 0).

    Raises InvalidInput naming the offending input and what was expected, or ResourceExhausted when
    the inputs hold more than `max_bytes` (0: no limit). Sizes are `nbytes`, known without reading
    the data; a BYTES (object) element counts as one pointer, its content is bounded by the message.
    """
    if not feeds:
        raise InvalidInput(f"request for model {model!r} has no inputs; expected {_names(signature)}")
    total = 0
    for name, array in feeds.items():
        _check_one(signature.input(name, model), array, model)
        total += array.nbytes
    if max_bytes and total > max_bytes:
        raise ResourceExhausted(
            f"request for model {model!r} has {total} bytes of input tensors; the limit is {max_bytes} bytes"
        )
    missing = [s.name for s in signature.inputs if s.name not in feeds]
    if missing:
        raise InvalidInput(f"model {model!r} is missing input(s) {', '.join(missing)}")
    return _rows(signature, feeds, model)


def _check_one(spec: TensorSpec, array: np.ndarray, model: str) -> None:
    got = dtypes.of_array(array)
    if got is not spec.dtype:
        raise InvalidInput(
            f"model {model!r} input {spec.name!r}: datatype {got.name} "
            f"does not match the expected {spec.dtype.name}"
        )
    if array.ndim != len(spec.shape):
        raise InvalidInput(
            f"model {model!r} input {spec.name!r}: rank {array.ndim} (shape {list(array.shape)}) "
            f"does not match the expected rank {len(spec.shape)} (shape {list(spec.shape)})"
        )
    for axis, (want, have) in enumerate(zip(spec.shape, array.shape, strict=True)):
        if want >= 0 and want != have:
            raise InvalidInput(
                f"model {model!r} input {spec.name!r}: shape {list(array.shape)} does not match "
                f"the expected {list(spec.shape)} at axis {axis}"
            )


def _rows(signature: Signature, feeds: Mapping[str, np.ndarray], model: str) -> int:
    if not signature.batch_axis:
        return 1
    rows = {a.shape[0] for a in feeds.values()}
    if len(rows) != 1:
        raise InvalidInput(
            f"model {model!r}: inputs disagree on the batch dimension (axis 0): {sorted(rows)}"
        )
    return int(rows.pop())


def _names(signature: Signature) -> str:
    return ", ".join(s.name for s in signature.inputs)
