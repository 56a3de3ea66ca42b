"""hypothesis strategies for the messages callers send: mostly near-valid, each wrong in a few ways.

A request is built around one of the served models (or an unknown one) and then bent: names,
version selectors, shapes (negative, huge, zero, wrong rank), data types (valid, invalid, not the
model's), raw data lengths (short, long, empty, raw and typed both), parameters, priorities and
timeouts.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from typing import Any, TypeVar

from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message
from google.protobuf.message_factory import GetMessageClass
from hypothesis import strategies as st

from ortserve import dtypes, tensors
from ortserve.api.inference import grpc_service_pb2 as oip
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.config import MiB
from ortserve.dtypes import DType

# What the fuzz server serves: model -> ([(input, OIP datatype, shape with -1 for any)], outputs).
SIGNATURES: dict[str, tuple[list[tuple[str, str, tuple[int, ...]]], list[str]]] = {
    "linear": ([("x", "FP32", (-1, 16))], ["y"]),
    "add": ([("a", "FP32", (-1, 4)), ("b", "FP32", (-1, 4))], ["z"]),
    "strings": ([("x", "BYTES", (-1,))], ["y"]),
    "gather": ([("data", "FP32", (-1, 4)), ("idx", "INT64", (-1, 1))], ["out"]),
}
INT64_MIN, INT64_MAX, UINT64_MAX = -(1 << 63), (1 << 63) - 1, (1 << 64) - 1
HUGE = 5 * MiB  # more than the fuzz server's max message size
_ENUM = {
    d: tpb.DataType.Value("DATA_TYPE_" + ("STRING" if d is dtypes.BYTES else d.name)) for d in dtypes.ALL
}

T = TypeVar("T")


def mostly(valid: st.SearchStrategy[T], bent: st.SearchStrategy[T], odds: int = 5) -> st.SearchStrategy[T]:
    """`valid` (odds - 1) times in `odds`, else `bent`: most requests get far enough to be served.

    The bend is the largest draw: hypothesis favours (and shrinks towards) 0, the valid side.
    """
    return st.integers(0, odds - 1).flatmap(lambda i: bent if i == odds - 1 else valid)


def _bend(draw: st.DrawFn, odds: int) -> bool:
    """True once in `odds` draws (on the largest value, so that shrinking straightens it)."""
    return draw(st.integers(0, odds - 1)) == odds - 1


# Free text that cannot look like a leak by itself: no path separators, dots or quotes.
names = st.text(st.characters(exclude_characters='/\\."', exclude_categories=("Cs",)), max_size=12)
model_names = mostly(st.sampled_from(list(SIGNATURES)), st.one_of(st.sampled_from(["missing", ""]), names))
versions = mostly(
    st.sampled_from(["", "1"]),
    st.one_of(
        st.sampled_from(["2", "0", "-1", "production", "canary", "latest", " 1", "1e3", "+1", "¹", "①"]),
        st.integers(INT64_MIN, UINT64_MAX).map(str),
        names,
    ),
)
datatypes = st.one_of(
    st.sampled_from(list(dtypes.BY_NAME)),
    st.sampled_from(["BF16", "fp32", "STRING", "TYPE_FP32", "FP8", "", "FP32 ", "INT128"]),
    names,
)
dims = st.one_of(
    st.integers(0, 4),
    st.integers(-3, -1),
    st.sampled_from([1 << 31, 1 << 40, INT64_MAX, INT64_MIN]),
)
odd_shapes = st.one_of(
    st.lists(dims, max_size=4),
    st.lists(st.integers(0, 2), min_size=5, max_size=40),  # far too many dimensions
    st.sampled_from([[0, 1 << 62], [1 << 31, 1 << 31, 0], [-1, 16], [1, -16], [2, 16, 1]]),
)


@dataclass(frozen=True)
class Tensor:
    """One input as sent: `dtype` is None when `datatype` names no type we know."""

    name: str
    datatype: str
    dtype: DType | None
    shape: list[int]
    raw: bytes


def _count(shape: list[int]) -> int | None:
    """Elements of a shape small enough to fill with data; None otherwise."""
    if len(shape) > 8 or any(d < 0 or d > 64 for d in shape):
        return None
    count = math.prod(shape)
    return count if count <= 1024 else None


@st.composite
def _valid_raw(draw: st.DrawFn, dtype: DType, count: int) -> bytes:
    if dtype is dtypes.BYTES:
        elements = draw(st.lists(st.binary(max_size=6), min_size=count, max_size=count))
        return tensors.encode_strings(elements)
    return draw(st.binary(min_size=count * dtype.itemsize, max_size=count * dtype.itemsize))


@st.composite
def raw_data(draw: st.DrawFn, dtype: DType | None, shape: list[int], huge: bool) -> bytes:
    """Data of the right size most of the time; else short, long, empty, noise or (rarely) huge."""
    count = _count(shape)
    kinds = st.sampled_from(["cut", "extra", "empty", "noise"])
    kind = draw(mostly(st.just("valid"), mostly(kinds, st.just("huge"), 10), 3))
    if kind == "huge" and huge:
        return bytes(HUGE)
    if dtype is None or count is None or kind in ("empty", "huge"):
        return b"" if kind == "empty" else draw(st.binary(max_size=64))
    if kind == "noise":
        return draw(st.binary(max_size=64))
    data = draw(_valid_raw(dtype, count))
    if kind == "cut":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "extra":
        return data + draw(st.binary(min_size=1, max_size=9))
    return data


@st.composite
def tensor(draw: st.DrawFn, spec: tuple[str, str, tuple[int, ...]] | None, rows: int, huge: bool) -> Tensor:
    """An input near `spec` (name, datatype, shape): each of its parts may be swapped for a wrong one."""
    name, datatype, shape = spec or (draw(names), draw(datatypes), (-1,))
    if _bend(draw, 20):
        name = draw(names)
    if _bend(draw, 10):
        datatype = draw(datatypes)
    concrete = [rows if d < 0 else d for d in shape]
    sent = draw(odd_shapes) if _bend(draw, 5) else concrete
    dtype = dtypes.BY_NAME.get(datatype)
    return Tensor(name, datatype, dtype, sent, draw(raw_data(dtype, sent, huge)))


@st.composite
def model_inputs(draw: st.DrawFn, model: str, huge: bool = False) -> list[Tensor]:
    """Inputs for `model`: its own, bent, with one dropped, doubled or added now and then."""
    specs = SIGNATURES[model][0] if model in SIGNATURES else [None]
    rows = draw(st.integers(0, 3))
    inputs = [draw(tensor(spec, rows, huge)) for spec in specs]
    change = draw(st.integers(0, 12))
    if change == 10 and inputs:
        inputs.pop(draw(st.integers(0, len(inputs) - 1)))
    elif change == 11 and inputs:
        inputs.append(inputs[0])
    elif change == 12:
        inputs.append(draw(tensor(None, rows, huge)))
    return inputs


def _outputs(model: str) -> st.SearchStrategy[list[str]]:
    known = SIGNATURES[model][1] if model in SIGNATURES else []
    wrong = st.lists(st.one_of(st.sampled_from([*known, "nope", ""]), names), min_size=1, max_size=3)
    return mostly(st.just([]) | st.just(known), wrong)


# -- our API ------------------------------------------------------------------------------------


@st.composite
def predict_requests(draw: st.DrawFn, huge: bool = True) -> ipb.PredictRequest:
    model = draw(model_names)
    request = ipb.PredictRequest(
        model=model,
        version=draw(versions),
        output_names=draw(_outputs(model)),
        routing_key=draw(st.one_of(st.just(""), names)),
        priority=draw(st.one_of(st.just(0), st.integers(0, (1 << 32) - 1))),
        timeout_us=draw(mostly(st.just(0), st.integers(1, 2000) | st.integers(0, UINT64_MAX), 3)),
    )
    for item in draw(model_inputs(model, huge)):
        enum = _ENUM[item.dtype] if item.dtype is not None else draw(st.integers(0, 20))
        if _bend(draw, 10):
            enum = draw(st.one_of(st.integers(0, 13), st.integers(14, (1 << 31) - 1)))
        request.inputs.add(name=item.name, data_type=enum, shape=item.shape, raw_data=item.raw)
    return request


@st.composite
def predict_streams(draw: st.DrawFn, good: ipb.PredictRequest) -> list[ipb.PredictStreamRequest]:
    """1-6 stream messages, fuzzed ones mixed with `good` ones; ids are the positions."""
    requests = draw(st.lists(st.one_of(predict_requests(huge=False), st.just(good)), min_size=1, max_size=6))
    return [ipb.PredictStreamRequest(id=str(i), request=r) for i, r in enumerate(requests)]


# -- Open Inference Protocol --------------------------------------------------------------------

_PARAMETER_KEYS = [
    "priority",
    "timeout",
    "sequence_id",
    "sequence_start",
    "binary_data_output",
    "binary_data_size",
    "triton_enable_empty_final_response",
    "shared_memory_region",
    "shared_memory_byte_size",
    "shared_memory_offset",
    "classification",
    "headers",
]


@st.composite
def infer_parameter(draw: st.DrawFn) -> oip.InferParameter:
    kind = draw(st.sampled_from(["bool", "int64", "string", "double", "uint64", "none"]))
    if kind == "bool":
        return oip.InferParameter(bool_param=draw(st.booleans()))
    if kind == "int64":
        return oip.InferParameter(int64_param=draw(st.integers(-5, 5) | st.integers(INT64_MIN, INT64_MAX)))
    if kind == "string":
        return oip.InferParameter(string_param=draw(names))
    if kind == "double":
        return oip.InferParameter(double_param=draw(st.floats(allow_nan=True)))
    if kind == "uint64":
        return oip.InferParameter(uint64_param=draw(st.integers(0, 5) | st.integers(0, UINT64_MAX)))
    return oip.InferParameter()


def parameters() -> st.SearchStrategy[dict[str, oip.InferParameter]]:
    keys = st.one_of(st.sampled_from(_PARAMETER_KEYS), names)
    return mostly(st.just({}), st.dictionaries(keys, infer_parameter(), min_size=1, max_size=3), 2)


def _put(target: Any, params: dict[str, oip.InferParameter]) -> None:
    """Copy `params` into a protobuf map of messages (which takes no update())."""
    for key, value in params.items():
        target[key].CopyFrom(value)


# Typed contents fields and what each holds.
_FIELDS = {
    "bool_contents": st.booleans(),
    "int_contents": st.integers(-(1 << 31), (1 << 31) - 1),
    "int64_contents": st.integers(INT64_MIN, INT64_MAX),
    "uint_contents": st.integers(0, (1 << 32) - 1),
    "uint64_contents": st.integers(0, UINT64_MAX),
    "fp32_contents": st.floats(width=32),
    "fp64_contents": st.floats(),
    "bytes_contents": st.binary(max_size=6),
}
_TYPED_FIELD = {
    "BOOL": "bool_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}


@st.composite
def contents(draw: st.DrawFn, item: Tensor) -> oip.InferTensorContents:
    """Typed contents for `item`: its own field with the right count mostly, else any field and count."""
    count = _count(item.shape)
    field = _TYPED_FIELD.get(item.datatype)
    if field is None or _bend(draw, 5):
        field = draw(st.sampled_from(list(_FIELDS)))
    size = draw(st.integers(0, 5)) if count is None or _bend(draw, 4) else count
    values = draw(st.lists(_FIELDS[field], min_size=size, max_size=size))
    filled = oip.InferTensorContents()
    getattr(filled, field).extend(values)
    return filled


@st.composite
def infer_requests(draw: st.DrawFn, huge: bool = True) -> oip.ModelInferRequest:
    model = draw(model_names)
    request = oip.ModelInferRequest(
        model_name=model,
        model_version=draw(versions),
        id=draw(st.one_of(st.just(""), names)),
        parameters=draw(parameters()),
    )
    mode = draw(mostly(st.sampled_from(["raw", "typed"]), st.sampled_from(["both", "neither", "raw-count"])))
    for item in draw(model_inputs(model, huge)):
        tensor = request.inputs.add(name=item.name, datatype=item.datatype, shape=item.shape)
        if _bend(draw, 5):
            _put(tensor.parameters, draw(parameters()))
        if mode in ("raw", "both", "raw-count"):
            request.raw_input_contents.append(item.raw)
        if mode in ("typed", "both"):
            tensor.contents.CopyFrom(draw(contents(item)))
    if mode == "raw-count":  # one raw entry too many or too few
        if request.raw_input_contents and draw(st.booleans()):
            del request.raw_input_contents[-1]
        else:
            request.raw_input_contents.append(draw(st.binary(max_size=16)))
    for name in draw(_outputs(model)):
        output = request.outputs.add(name=name)
        if _bend(draw, 4):
            _put(output.parameters, draw(parameters()))
    return request


@st.composite
def infer_streams(draw: st.DrawFn, good: oip.ModelInferRequest) -> list[oip.ModelInferRequest]:
    """1-6 ModelStreamInfer messages, fuzzed and `good` mixed; ids are the positions."""
    requests = draw(st.lists(st.one_of(infer_requests(huge=False), st.just(good)), min_size=1, max_size=6))
    out = []
    for i, request in enumerate(requests):
        message = oip.ModelInferRequest()
        message.CopyFrom(request)
        message.id = str(i)
        out.append(message)
    return out


# -- RegisterModel ------------------------------------------------------------------------------

_sizes = st.one_of(st.integers(0, 4096), st.sampled_from([1 << 31, 1 << 40, UINT64_MAX]))
_hex = st.text("0123456789abcdef", min_size=64, max_size=64)
_sha256s = st.one_of(_hex, _hex.map(str.upper), st.text("0123456789abcdefxyz", max_size=70), st.just(""))
_counts = st.one_of(st.integers(0, 8), st.integers(0, (1 << 32) - 1))


@st.composite
def manifests(draw: st.DrawFn, name: str | None = None, data: bytes | None = None) -> rpb.RegisterManifest:
    """A manifest with any settings; with `data`, its size and sha256 are those of `data`."""
    manifest = rpb.RegisterManifest(
        name=name if name is not None else draw(model_names),
        size_bytes=len(data) if data is not None else draw(_sizes),
        sha256=hashlib.sha256(data).hexdigest() if data is not None else draw(_sha256s),
        description=draw(names),
        labels=draw(st.dictionaries(names, names, max_size=2)),
        load=draw(st.booleans()),
    )
    for provider in draw(
        st.lists(st.sampled_from(["CPUExecutionProvider", "CUDAExecutionProvider", "Nope", ""]), max_size=2)
    ):
        manifest.providers.add(name=provider, options=draw(st.dictionaries(names, names, max_size=2)))
    if draw(st.booleans()):
        manifest.batching.CopyFrom(
            mpb.BatchingConfig(
                max_queue_delay_us=draw(st.integers(0, UINT64_MAX) | st.integers(0, 1000)),
                preferred_batch_sizes=draw(st.lists(_counts, max_size=3)),
                max_queue_size=draw(_counts),
                max_concurrent_batches=draw(st.integers(0, 8)),
            )
        )
        if draw(st.booleans()):
            manifest.batching.max_batch_size = draw(_counts)
    if draw(st.booleans()):
        level = st.sampled_from(["", "disable", "basic", "extended", "all", "max", "ALL"])
        manifest.session.CopyFrom(
            mpb.SessionConfig(
                graph_optimization_level=draw(level),
                intra_op_num_threads=draw(st.integers(0, 4)),
                inter_op_num_threads=draw(st.integers(0, 4)),
                execution_mode=draw(st.sampled_from(["", "sequential", "parallel", "both"])),
                disable_memory_pattern=draw(st.booleans()),
                disable_cpu_mem_arena=draw(st.booleans()),
            )
        )
    return manifest


_chunk = st.one_of(st.binary(max_size=64), st.just(bytes((1 << 20) + 1)))  # one over the chunk limit


@st.composite
def register_sequences(draw: st.DrawFn) -> list[rpb.RegisterModelRequest]:
    """A manifest (or not) first, then chunks, with a stray manifest or empty message now and then."""
    message = st.one_of(
        _chunk.map(lambda data: rpb.RegisterModelRequest(chunk=data)),
        manifests().map(lambda m: rpb.RegisterModelRequest(manifest=m)),
        st.just(rpb.RegisterModelRequest()),
    )
    first = draw(st.one_of(manifests().map(lambda m: rpb.RegisterModelRequest(manifest=m)), message))
    rest = draw(
        st.lists(st.one_of(_chunk.map(lambda d: rpb.RegisterModelRequest(chunk=d)), message), max_size=4)
    )
    return [first, *rest]


@st.composite
def model_uploads(draw: st.DrawFn, model: bytes) -> list[rpb.RegisterModelRequest]:
    """`model` (or a damaged copy) under a fuzz-only name, with the right size and sha256."""
    data = model
    damage = draw(st.sampled_from(["none", "cut", "flip", "noise"]))
    if damage == "cut":
        data = model[: draw(st.integers(1, len(model) - 1))]
    elif damage == "flip":
        at = draw(st.integers(0, len(model) - 1))
        data = model[:at] + bytes([model[at] ^ draw(st.integers(1, 255))]) + model[at + 1 :]
    elif damage == "noise":
        data = draw(st.binary(min_size=1, max_size=256))
    name = draw(st.sampled_from(["fuzz-upload", "fuzz_upload_2"]))
    manifest = draw(manifests(name=name, data=data))
    cut = draw(st.integers(0, len(data)))
    chunks = [data[:cut], data[cut:]] if cut else [data]
    return [rpb.RegisterModelRequest(manifest=manifest)] + [rpb.RegisterModelRequest(chunk=c) for c in chunks]


# -- any message, from its descriptor ------------------------------------------------------------

# Strings never name a served model, so that random management calls cannot retire or unload one.
_strings = st.one_of(
    st.sampled_from(["", "missing", "fuzz-model", "production", "1", "-1", "¹", "file:1/m.onnx"]), names
)
_SCALARS: dict[int, st.SearchStrategy[Any]] = {
    FieldDescriptor.TYPE_STRING: _strings,
    FieldDescriptor.TYPE_BYTES: st.binary(max_size=32),
    FieldDescriptor.TYPE_BOOL: st.booleans(),
    FieldDescriptor.TYPE_INT32: st.integers(-5, 5) | st.integers(-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SINT32: st.integers(-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_SFIXED32: st.integers(-(1 << 31), (1 << 31) - 1),
    FieldDescriptor.TYPE_INT64: st.integers(-5, 5) | st.integers(INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_SINT64: st.integers(INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_SFIXED64: st.integers(INT64_MIN, INT64_MAX),
    FieldDescriptor.TYPE_UINT32: st.integers(0, 5) | st.integers(0, (1 << 32) - 1),
    FieldDescriptor.TYPE_FIXED32: st.integers(0, (1 << 32) - 1),
    FieldDescriptor.TYPE_UINT64: st.integers(0, 5) | st.integers(0, UINT64_MAX),
    FieldDescriptor.TYPE_FIXED64: st.integers(0, UINT64_MAX),
    FieldDescriptor.TYPE_FLOAT: st.floats(width=32),
    FieldDescriptor.TYPE_DOUBLE: st.floats(),
    FieldDescriptor.TYPE_ENUM: st.integers(-1, 6),
}


@st.composite
def any_message(draw: st.DrawFn, descriptor: Descriptor, depth: int = 0) -> Message:
    """A message of `descriptor`'s type with any of its fields set to any value (nesting 3 deep)."""
    message = GetMessageClass(descriptor)()
    for field in descriptor.fields:
        if draw(st.booleans()):
            _fill(draw, message, field, depth)
    return message


def _fill(draw: st.DrawFn, message: Message, field: FieldDescriptor, depth: int) -> None:
    target = getattr(message, field.name)
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        key_field, value_field = (
            field.message_type.fields_by_name["key"],
            field.message_type.fields_by_name["value"],
        )
        for _ in range(draw(st.integers(0, 2))):
            key = draw(_SCALARS[key_field.type])
            if value_field.message_type is None:
                target[key] = draw(_SCALARS[value_field.type])
            elif depth < 3:
                target[key].CopyFrom(draw(any_message(value_field.message_type, depth + 1)))
        return
    if field.message_type is not None:
        if depth >= 3:
            return
        values = draw(st.lists(any_message(field.message_type, depth + 1), min_size=1, max_size=2))
        if field.is_repeated:
            for value in values:
                target.add().CopyFrom(value)
        else:
            target.CopyFrom(values[0])
        return
    if field.is_repeated:
        target.extend(draw(st.lists(_SCALARS[field.type], max_size=3)))
    else:
        setattr(message, field.name, draw(_SCALARS[field.type]))


@st.composite
def mutated(draw: st.DrawFn, data: bytes) -> bytes:
    """`data` cut short, with a byte changed, or with bytes inserted."""
    at = draw(st.integers(0, len(data)))
    how = draw(st.sampled_from(["cut", "flip", "insert"]))
    if how == "cut" or not data:
        return data[:at]
    if how == "flip":
        at = min(at, len(data) - 1)
        return data[:at] + bytes([data[at] ^ draw(st.integers(1, 255))]) + data[at + 1 :]
    return data[:at] + draw(st.binary(min_size=1, max_size=4)) + data[at:]


def request_bytes(descriptor: Descriptor) -> st.SearchStrategy[bytes]:
    """Random bytes; a random message of the request type; or such a message, damaged."""
    serialized = any_message(descriptor).map(lambda m: m.SerializeToString())
    return st.one_of(
        st.binary(max_size=64),
        st.binary(min_size=64, max_size=2048),
        serialized,
        serialized.flatmap(mutated),
    )
