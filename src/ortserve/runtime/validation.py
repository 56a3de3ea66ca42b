"""Validate an untrusted model file in a throwaway, memory-limited subprocess.

The child loads the file without external data, rejects tensors stored outside it, runs the ONNX
checker with full checks, allows operators only from known domains (and those of the custom operator
libraries, which it registers), builds a CPU ONNX Runtime session and reads the signature. A crash,
an out-of-memory kill or a timeout of the child takes nothing else down and becomes InvalidInput.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ortserve import dtypes
from ortserve.errors import InvalidInput, ResourceExhausted, logged
from ortserve.runtime.custom_ops import NO_CUSTOM_OPS, CustomOps
from ortserve.signature import Signature, TensorSpec

if TYPE_CHECKING:
    import onnx

GiB = 1 << 30
ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")
_RESULT = b"ortserve-validation-result "
_OOM_SIGNS = ("bad_alloc", "alloc failed", "Failed to allocate", "MemoryError", "out of memory")


@dataclass(frozen=True, slots=True, kw_only=True)
class ValidationLimits:
    """`memory_bytes` caps the child's address space; None: 4 GiB plus the model's size."""

    max_model_bytes: int = 2 * GiB
    memory_bytes: int | None = None
    timeout_s: float = 120.0


@dataclass(frozen=True, slots=True)
class ModelInfo:
    opset: int
    producer: str
    signature: Signature


def validate_model(
    path: Path, limits: ValidationLimits | None = None, custom_ops: CustomOps = NO_CUSTOM_OPS
) -> ModelInfo:
    """Check the model at `path` in a subprocess; InvalidInput or ResourceExhausted naming the problem.
    `custom_ops`: libraries the child registers, and domains it allows besides ALLOWED_DOMAINS."""
    limits = limits or ValidationLimits()
    size = _check_size(path, limits)
    memory = limits.memory_bytes if limits.memory_bytes is not None else 4 * GiB + size
    return _in_child(path, memory, limits.timeout_s, custom_ops)


def _check_size(path: Path, limits: ValidationLimits) -> int:
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise InvalidInput(f"model file {str(path)!r} cannot be read: {exc.strerror}") from None
    if size > limits.max_model_bytes:
        raise ResourceExhausted(f"model file is {size} bytes; the limit is {limits.max_model_bytes} bytes")
    if size == 0:
        raise InvalidInput("model file is empty")
    return size


def _in_child(path: Path, memory_bytes: int, timeout_s: float, custom_ops: CustomOps) -> ModelInfo:
    """Run this module as a fresh interpreter (nothing of ours is inherited, unlike fork)."""
    command = [sys.executable, "-m", __name__, str(path), str(memory_bytes), str(timeout_s)]
    command.append(json.dumps(custom_ops.to_json()))
    try:
        done = subprocess.run(command, capture_output=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        raise InvalidInput(f"model validation timed out after {timeout_s:g} s") from None
    lines = [line for line in done.stdout.splitlines() if line.startswith(_RESULT)]
    if done.returncode != 0 or not lines:
        raise InvalidInput(
            f"model validation crashed (exit code {done.returncode}); the model may need more memory "
            "than the validation limit or crash ONNX Runtime"
        )
    outcome = json.loads(lines[-1].removeprefix(_RESULT))
    if outcome["ok"]:
        return ModelInfo(outcome["opset"], outcome["producer"], Signature.from_json(outcome["signature"]))
    detail = outcome.get("detail")
    raise InvalidInput(logged(outcome["error"], detail) if detail else outcome["error"])


class _Detailed(InvalidInput):
    """A rejection whose library text (onnx, ONNX Runtime) is logged, never shown to the caller."""

    def __init__(self, message: str, detail: BaseException) -> None:
        super().__init__(message)
        self.detail = f"{type(detail).__name__}: {detail}"


def _child_main(path: str, memory_bytes: int, timeout_s: float, custom_ops: CustomOps) -> None:
    import resource

    resource.setrlimit(resource.RLIMIT_AS, (memory_bytes, memory_bytes))
    cpu = int(timeout_s) + 1
    resource.setrlimit(resource.RLIMIT_CPU, (cpu, cpu))
    try:
        info = check_model_file(Path(path), custom_ops)
        outcome: dict[str, Any] = {
            "ok": True,
            "opset": info.opset,
            "producer": info.producer,
            "signature": info.signature.to_json(),
        }
    except _Detailed as exc:
        outcome = {"ok": False, "error": _name_oom(str(exc), exc.detail, memory_bytes), "detail": exc.detail}
    except InvalidInput as exc:
        outcome = {"ok": False, "error": _name_oom(str(exc), str(exc), memory_bytes)}
    except MemoryError:
        outcome = {"ok": False, "error": _name_oom("model validation failed", "MemoryError", memory_bytes)}
    except Exception as exc:
        detail = f"{type(exc).__name__}: {exc}"
        outcome = {"ok": False, "error": _name_oom("model validation failed", detail, memory_bytes)}
        outcome["detail"] = detail
    sys.stdout.buffer.write(_RESULT + json.dumps(outcome).encode() + b"\n")
    sys.stdout.flush()


def _name_oom(message: str, detail: str, memory_bytes: int) -> str:
    if any(sign in detail for sign in _OOM_SIGNS):
        return f"model validation exceeded its memory limit of {memory_bytes} bytes: {message}"
    return message


def check_model_file(path: Path, custom_ops: CustomOps = NO_CUSTOM_OPS) -> ModelInfo:
    """The checks themselves, in this process: only for trusted files or inside the child."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise _Detailed("model bytes are not a valid ONNX model", exc) from None
    _reject_external_data(model)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        text = str(exc).replace(str(path.parent), "<upload>")
        raise InvalidInput(f"model fails the ONNX checker: {text}") from None
    _check_domains(model, custom_ops.domains)
    return ModelInfo(_opset(model), model.producer_name, _signature(path, custom_ops))


def _reject_external_data(model: onnx.ModelProto) -> None:
    import onnx

    for where, tensor in _all_tensors(model):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            location = next((e.value for e in tensor.external_data if e.key == "location"), "")
            raise InvalidInput(
                f"tensor {tensor.name!r} ({where}) keeps its data in the external file {location!r}; "
                "only self-contained single-file models are accepted"
            )


def _all_tensors(model: onnx.ModelProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    yield from _graph_tensors(model.graph)
    for function in model.functions:
        for node in function.node:
            yield from _node_tensors(node, f"function {function.name!r}")
    for info in model.training_info:
        yield from _graph_tensors(info.initialization)
        yield from _graph_tensors(info.algorithm)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[tuple[str, onnx.TensorProto]]:
    where = f"graph {graph.name!r}"
    for tensor in graph.initializer:
        yield f"initializer of {where}", tensor
    for sparse in graph.sparse_initializer:
        yield f"sparse initializer of {where}", sparse.values
        yield f"sparse initializer of {where}", sparse.indices
    for node in graph.node:
        yield from _node_tensors(node, where)


def _node_tensors(node: onnx.NodeProto, where: str) -> Iterator[tuple[str, onnx.TensorProto]]:
    label = f"attribute of node {node.name or node.op_type!r} in {where}"
    for attr in node.attribute:
        if attr.HasField("t"):
            yield label, attr.t
        yield from ((label, t) for t in attr.tensors)
        sparse = [attr.sparse_tensor] if attr.HasField("sparse_tensor") else []
        for s in [*sparse, *attr.sparse_tensors]:
            yield label, s.values
            yield label, s.indices
        if attr.HasField("g"):
            yield from _graph_tensors(attr.g)
        for graph in attr.graphs:
            yield from _graph_tensors(graph)


def _all_nodes(model: onnx.ModelProto) -> Iterator[onnx.NodeProto]:
    graphs = [model.graph, *(g for t in model.training_info for g in (t.initialization, t.algorithm))]
    nodes = [n for f in model.functions for n in f.node]
    while graphs or nodes:
        if graphs:
            nodes.extend(graphs.pop().node)
            continue
        node = nodes.pop()
        yield node
        for attr in node.attribute:
            graphs.extend([attr.g] if attr.HasField("g") else [])
            graphs.extend(attr.graphs)


def _check_domains(model: onnx.ModelProto, custom_domains: tuple[str, ...] = ()) -> None:
    local = {(f.domain, f.name) for f in model.functions}
    domains = ALLOWED_DOMAINS + custom_domains
    for node in _all_nodes(model):
        if node.domain not in domains and (node.domain, node.op_type) not in local:
            allowed = ", ".join(repr(d) for d in domains)
            raise InvalidInput(
                f"operator domain {node.domain!r} (node {node.name or node.op_type!r}) is not allowed; "
                f"allowed: {allowed}"
            )


def _opset(model: onnx.ModelProto) -> int:
    return next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)


def _signature(path: Path, custom_ops: CustomOps) -> Signature:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        custom_ops.register(options)
        session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise _Detailed("onnxruntime cannot load the model", exc) from None
    inputs = tuple(_spec(arg, "input") for arg in session.get_inputs())
    outputs = tuple(_spec(arg, "output") for arg in session.get_outputs())
    return Signature(inputs, outputs, _batch_axis(session.get_inputs(), session.get_outputs()))


def _spec(arg: Any, kind: str) -> TensorSpec:
    dtype = dtypes.BY_ORT.get(arg.type)
    if dtype is None:
        known = ", ".join(sorted(dtypes.BY_ORT))
        raise InvalidInput(f"model {kind} {arg.name!r} has type {arg.type}; supported: {known}")
    return TensorSpec(arg.name, dtype, tuple(_dim(d) for d in arg.shape))


def _dim(dim: Any) -> int:
    return dim if isinstance(dim, int) and dim >= 0 else -1


def _batch_axis(inputs: list[Any], outputs: list[Any]) -> bool:
    """Axis 0 of every input and output is dynamic, and the inputs' symbolic names for it agree."""
    args = [*inputs, *outputs]
    if not args or any(len(a.shape) == 0 or _dim(a.shape[0]) != -1 for a in args):
        return False
    names = {a.shape[0] for a in inputs if isinstance(a.shape[0], str)}
    return len(names) <= 1


if __name__ == "__main__":
    _child_main(
        sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), CustomOps.from_json(json.loads(sys.argv[4]))
    )
