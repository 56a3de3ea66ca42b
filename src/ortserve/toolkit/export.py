"""Export a PyTorch module to ONNX and prove the export before anyone serves it.

The export uses torch's `torch.export`-based exporter (`dynamo=True`, which needs onnxscript). The
result must pass the ONNX checker with full checks, keep axis 0 of every input and output as a
dynamic batch dimension (when asked), and give ONNX Runtime's CPU outputs equal to torch's within a
tolerance, on the example inputs and on them repeated to another batch size. torch is imported only
when `from_torch` runs, so this module imports without it.
"""

from __future__ import annotations

import importlib.util
import traceback
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from ortserve.errors import FailedPrecondition, InvalidInput, logged
from ortserve.toolkit.report import compare_outputs

_INSTALL = "install ortserve[torch]"


@dataclass(frozen=True, slots=True)
class _Job:
    """One export: the torch module, the module, names and settings."""

    torch: Any
    module: Any
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    dynamic_batch: bool
    opset: int | None
    rtol: float
    atol: float


@dataclass(frozen=True, slots=True)
class _Check:
    """One comparison run: inputs as torch tensors, and how a message names them."""

    inputs: tuple[Any, ...]
    what: str


def from_torch(
    module: Any,
    example_inputs: Any,
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    opset: int | None = None,
    rtol: float = 1e-3,
    atol: float = 1e-4,
) -> bytes:
    """ONNX bytes of `module` (a `torch.nn.Module`) run on `example_inputs` (a tensor or a sequence).

    With `dynamic_batch`, axis 0 of every input and output is one dynamic dimension. Write the bytes
    to a file for `Client.register`. Raises InvalidInput naming the cause when the export fails, the
    batch axis is not dynamic, or ONNX Runtime's outputs differ from torch's beyond `rtol`/`atol`;
    FailedPrecondition when torch or onnxscript is not installed.
    """
    _check_names(input_names, "input_names")
    _check_names(output_names, "output_names")
    job = _Job(_torch(), module, tuple(input_names), tuple(output_names), dynamic_batch, opset, rtol, atol)
    inputs = _example_tuple(job, example_inputs)
    model = _export(job, inputs)
    data = _checked_bytes(model)
    _check_opset(job, model)
    _check_io(job, model)
    session = _session(data)
    for check in _checks(job, inputs):
        _compare(job, session, check)
    return data


def _torch() -> Any:
    try:
        import onnxscript  # noqa: F401  (the exporter imports it; a missing one is named here)
        import torch
    except ImportError as exc:
        raise FailedPrecondition(f"exporting from PyTorch needs torch and onnxscript: {_INSTALL}") from exc
    if importlib.util.find_spec("onnxruntime") is None:
        raise FailedPrecondition("checking the export needs ONNX Runtime: install ortserve[cpu] or [gpu]")
    return torch


def _failure(message: str, exc: BaseException) -> InvalidInput:
    """InvalidInput saying `message`; the traceback goes to the log as text, without the frames'
    locals a structured logger would render (torch's run to megabytes)."""
    return InvalidInput(logged(message, "".join(traceback.format_exception(exc))))


def _check_names(names: Sequence[str], what: str) -> None:
    if isinstance(names, str) or not names or not all(isinstance(n, str) and n for n in names):
        raise InvalidInput(f"{what} must be a non-empty list of non-empty names, got {names!r}")
    if len(set(names)) != len(names):
        raise InvalidInput(f"{what} has a repeated name: {list(names)}")


def _example_tuple(job: _Job, example_inputs: Any) -> tuple[Any, ...]:
    tensor_type = job.torch.Tensor
    inputs = (example_inputs,) if isinstance(example_inputs, tensor_type) else tuple(example_inputs)
    if len(inputs) != len(job.input_names):
        raise InvalidInput(
            f"{len(inputs)} example input(s) for {len(job.input_names)} input name(s) {list(job.input_names)}"
        )
    for name, tensor in zip(job.input_names, inputs, strict=True):
        if not isinstance(tensor, tensor_type):
            raise InvalidInput(f"example input {name!r} is a {type(tensor).__name__}, not a torch.Tensor")
        if job.dynamic_batch and tensor.dim() == 0:
            raise InvalidInput(f"example input {name!r} is a scalar: it has no axis 0 to hold the batch")
    if job.dynamic_batch:
        sizes = {name: int(t.shape[0]) for name, t in zip(job.input_names, inputs, strict=True)}
        if len(set(sizes.values())) > 1:
            raise InvalidInput(f"example inputs disagree on the batch size (axis 0): {sizes}")
        if 0 in sizes.values():
            raise InvalidInput("example inputs have 0 rows (axis 0); give at least one")
    return inputs


def _export(job: _Job, inputs: tuple[Any, ...]) -> onnx.ModelProto:
    dynamic_shapes = None
    if job.dynamic_batch:
        batch = job.torch.export.Dim("batch", min=1)
        dynamic_shapes = tuple({0: batch} for _ in inputs)
    try:
        program = job.torch.onnx.export(
            job.module,
            inputs,
            input_names=list(job.input_names),
            output_names=list(job.output_names),
            opset_version=job.opset,
            dynamic_shapes=dynamic_shapes,
            dynamo=True,
            external_data=False,
            verbose=False,
        )
        model: onnx.ModelProto = program.model_proto
    except Exception as exc:
        raise _failure("torch.onnx.export failed to export the module", exc) from exc
    return model


def _checked_bytes(model: onnx.ModelProto) -> bytes:
    try:
        data = model.SerializeToString()
        onnx.checker.check_model(model, full_check=True)
    except Exception as exc:
        raise _failure("the exported model does not pass the ONNX checker", exc) from exc
    return data


def _check_opset(job: _Job, model: onnx.ModelProto) -> None:
    found = {o.domain: o.version for o in model.opset_import}.get("", 0)
    if job.opset is not None and found != job.opset:
        raise InvalidInput(f"opset {job.opset} was asked for, but the exported model has opset {found}")


def _check_io(job: _Job, model: onnx.ModelProto) -> None:
    for kind, values, expected in (
        ("input", model.graph.input, job.input_names),
        ("output", model.graph.output, job.output_names),
    ):
        names = tuple(v.name for v in values)
        if names != expected:
            raise InvalidInput(f"the exported model's {kind}s are {list(names)}, expected {list(expected)}")
        if job.dynamic_batch:
            for value in values:
                _check_batch_axis(kind, value)


def _check_batch_axis(kind: str, value: onnx.ValueInfoProto) -> None:
    dims = value.type.tensor_type.shape.dim
    if not dims:
        raise InvalidInput(f"{kind} {value.name!r} of the exported model has no axis 0 to hold the batch")
    if not dims[0].dim_param:
        raise InvalidInput(
            f"{kind} {value.name!r} of the exported model has a fixed axis 0 of size {dims[0].dim_value}, "
            "not a dynamic batch: the module fixes it (a reshape to a constant size, a sum over the batch)"
        )


def _session(data: bytes) -> Any:
    import onnxruntime as ort

    try:
        return ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _failure("ONNX Runtime cannot load the exported model", exc) from exc


def _checks(job: _Job, inputs: tuple[Any, ...]) -> tuple[_Check, ...]:
    if not job.dynamic_batch:
        return (_Check(inputs, "the example inputs"),)
    batch = int(inputs[0].shape[0])
    other = 3 if batch != 3 else 5
    rows = job.torch.arange(other) % batch
    repeated = tuple(t[rows.to(t.device)] for t in inputs)
    return (
        _Check(inputs, f"the example inputs (batch {batch})"),
        _Check(repeated, f"the example inputs repeated to batch {other}"),
    )


def _compare(job: _Job, session: Any, check: _Check) -> None:
    want = _torch_outputs(job, check)
    feeds = {name: t.detach().cpu().numpy() for name, t in zip(job.input_names, check.inputs, strict=True)}
    try:
        got = dict(zip(job.output_names, session.run(list(job.output_names), feeds), strict=True))
    except Exception as exc:
        message = f"ONNX Runtime failed to run the exported model on {check.what}"
        raise _failure(message, exc) from exc
    what = check.what
    if getattr(job.module, "training", False):
        what += " (the module is in training mode: call module.eval() first)"
    for name in job.output_names:
        _check_close(job, name, want[name], np.asarray(got[name]), what)


def _torch_outputs(job: _Job, check: _Check) -> dict[str, np.ndarray]:
    torch = job.torch
    try:
        with torch.no_grad():
            result = job.module(*check.inputs)
    except Exception as exc:
        raise _failure(f"the module failed on {check.what}", exc) from exc
    outputs = list(result) if isinstance(result, tuple | list) else [result]
    if len(outputs) != len(job.output_names) or not all(isinstance(o, torch.Tensor) for o in outputs):
        raise InvalidInput(
            f"the module returned {len(outputs)} value(s) on {check.what}; expected "
            f"{len(job.output_names)} tensor(s) for {list(job.output_names)}"
        )
    return {name: o.detach().cpu().numpy() for name, o in zip(job.output_names, outputs, strict=True)}


def _check_close(job: _Job, name: str, want: np.ndarray, got: np.ndarray, what: str) -> None:
    if want.shape != got.shape:
        raise InvalidInput(
            f"output {name!r} on {what}: ONNX Runtime gave shape {list(got.shape)}, torch {list(want.shape)}"
        )
    a, b = want.astype(np.float64), got.astype(np.float64)
    close = np.isclose(b, a, rtol=job.rtol, atol=job.atol, equal_nan=True)
    if close.all():
        return
    diff = compare_outputs({name: want}, {name: got})[0].max_abs_diff
    raise InvalidInput(
        f"output {name!r} of ONNX Runtime differs from torch on {what}: max abs diff {diff:.3g} "
        f"at {int((~close).sum())} of {close.size} elements, over the tolerance "
        f"atol {job.atol:g} + rtol {job.rtol:g} x |torch|"
    )
