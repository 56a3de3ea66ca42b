"""Validate an untrusted model file in a throwaway, memory-limited subprocess.

The child (`toolkit.sandbox.run_job`) loads the file without external data, rejects tensors stored
outside it, runs the ONNX checker with full checks, allows operators only from known domains (and
those of the custom operator libraries, which it registers), builds a CPU ONNX Runtime session, reads
the signature and runs one inference, so that a graph allocating more than the limit at load or at
run is refused here. A crash, an out-of-memory kill or a timeout of the child takes nothing else down
and becomes InvalidInput.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from ortserve import dtypes
from ortserve.errors import InvalidInput, ResourceExhausted
from ortserve.runtime.custom_ops import NO_CUSTOM_OPS, CustomOps
from ortserve.signature import Signature, TensorSpec
from ortserve.toolkit.samples import check_samples, from_npz, generate_samples, to_npz
from ortserve.toolkit.sandbox import Detailed, GiB, SandboxLimits, out_of_memory, run_job

if TYPE_CHECKING:
    import onnx

ALLOWED_DOMAINS = ("", "ai.onnx", "ai.onnx.ml", "com.microsoft")


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
    path: Path,
    limits: ValidationLimits | None = None,
    custom_ops: CustomOps = NO_CUSTOM_OPS,
    *,
    samples: Mapping[str, np.ndarray] | None = None,
) -> ModelInfo:
    """Check the model at `path` in a subprocess; InvalidInput or ResourceExhausted naming the problem.

    `custom_ops`: libraries the child registers, and domains it allows besides ALLOWED_DOMAINS.
    The child runs one inference on `samples` (checked against the signature; a failing run is
    refused), or without them on generated inputs of batch 1, where only running out of memory is
    refused: generated values may be outside what the model accepts (indices, say).
    """
    limits = limits or ValidationLimits()
    size = _check_size(path, limits)
    memory = limits.memory_bytes if limits.memory_bytes is not None else 4 * GiB + size
    sandbox = SandboxLimits(memory_bytes=memory, timeout_s=limits.timeout_s)
    request: dict[str, Any] = {"path": str(path), "custom_ops": custom_ops.to_json(), "samples": None}
    with tempfile.TemporaryDirectory(prefix="ortserve-validation-") as tmp:
        if samples is not None:
            request["samples"] = str(Path(tmp) / "samples.npz")
            Path(request["samples"]).write_bytes(to_npz(samples))
        result = run_job(f"{__name__}:validation_job", request, sandbox, "model validation")
    return ModelInfo(result["opset"], result["producer"], Signature.from_json(result["signature"]))


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


def validation_job(request: dict[str, Any]) -> dict[str, Any]:
    """The child's side of `validate_model` (run by the sandbox): the checks, then one inference."""
    info, session = _check(Path(request["path"]), CustomOps.from_json(request["custom_ops"]))
    if request["samples"] is None:
        _run_generated(session, info.signature)
    else:
        samples = from_npz(Path(request["samples"]), "sample inputs")
        check_samples(info.signature, samples, "sample inputs")
        _run(session, samples, "the sample inputs")
    return {"opset": info.opset, "producer": info.producer, "signature": info.signature.to_json()}


def _run_generated(session: Any, signature: Signature) -> None:
    try:
        _run(session, generate_samples(signature, rows=1), "generated inputs (batch 1)")
    except Detailed as exc:
        if out_of_memory(exc.detail):
            raise


def _run(session: Any, feeds: Mapping[str, np.ndarray], what: str) -> None:
    try:
        session.run(None, dict(feeds))
    except MemoryError:
        raise
    except Exception as exc:  # ONNX Runtime raises its own types
        raise Detailed(f"the model fails to run on {what}", exc) from None


def check_model_file(path: Path, custom_ops: CustomOps = NO_CUSTOM_OPS) -> ModelInfo:
    """The checks themselves, in this process: only for trusted files or inside the child."""
    return _check(path, custom_ops)[0]


def _check(path: Path, custom_ops: CustomOps) -> tuple[ModelInfo, Any]:
    """ModelInfo and the CPU session its signature was read from."""
    import onnx

    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as exc:
        raise Detailed("model bytes are not a valid ONNX model", exc) from None
    _reject_external_data(model)
    try:
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        if out_of_memory(str(exc)):
            raise Detailed("the ONNX checker ran out of memory", exc) from None
        text = str(exc).replace(str(path.parent), "<upload>")
        raise InvalidInput(f"model fails the ONNX checker: {text}") from None
    _check_domains(model, custom_ops.domains)
    session = _session(path, custom_ops)
    return ModelInfo(_opset(model), model.producer_name, _signature(session)), session


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


def _session(path: Path, custom_ops: CustomOps) -> Any:
    import onnxruntime as ort

    try:
        options = ort.SessionOptions()
        custom_ops.register(options)
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except MemoryError:
        raise
    except Exception as exc:
        raise Detailed("onnxruntime cannot load the model", exc) from None


def _signature(session: Any) -> Signature:
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
