"""atheris over the tensor decoders: raw tensors, BYTES elements, typed contents and whole requests.

Every input must either decode into an array that matches its declared shape and type, or fail
with a domain error (ortserve.errors.OrtserveError); anything else is a crash.

    .venv/bin/python tests/fuzz/atheris_decoders.py -atheris_runs=50000 -seed=1

The pytest test tests/fuzz/test_atheris.py runs it for a bounded number of runs.
"""

from __future__ import annotations

import contextlib
import math
import sys
from collections.abc import Callable

import atheris
import numpy as np
import onnxruntime  # noqa: F401  # imported before instrumenting, so it is not instrumented
from google.protobuf.message import DecodeError

# Our modules are instrumented for coverage; their heavy dependencies were imported above.

with atheris.instrument_imports(include=["ortserve"]):
    from ortserve import dtypes, tensors
    from ortserve.api.inference import grpc_service_pb2 as oip
    from ortserve.api.v1 import inference_service_pb2 as ipb
    from ortserve.api.v1 import tensor_pb2 as tpb
    from ortserve.errors import OrtserveError
    from ortserve.server import convert, oip_convert

DATATYPES = [*dtypes.BY_NAME, "BF16", "fp32", "", "INT128", "STRING", "FP32\x00"]
PARAM_KEYS = ["priority", "timeout", "sequence_id", "shared_memory_region", "binary_data_size", "x"]
INT64_MAX = (1 << 63) - 1


def _dim(fdp: atheris.FuzzedDataProvider) -> int:
    """Mostly small dimensions; sometimes negative, huge or at the int64 limits."""
    kind = fdp.ConsumeIntInRange(0, 7)
    if kind <= 4:
        return fdp.ConsumeIntInRange(0, 4)
    if kind == 5:
        return fdp.ConsumeIntInRange(-3, -1)
    if kind == 6:
        return fdp.ConsumeIntInRange(1 << 30, 1 << 33)
    return fdp.PickValueInList([INT64_MAX, -INT64_MAX - 1, 1 << 31, 1 << 62])


def _shape(fdp: atheris.FuzzedDataProvider) -> list[int]:
    rank = fdp.ConsumeIntInRange(0, 5) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 80)
    return [_dim(fdp) for _ in range(rank)]


def _check_array(array: np.ndarray, dtype: dtypes.DType, shape: list[int]) -> None:
    assert list(array.shape) == shape, (array.shape, shape)
    if dtype.itemsize:
        assert array.dtype == dtype.wire, (array.dtype, dtype)
    else:
        assert array.dtype == np.dtype(object)


def decode_raw(fdp: atheris.FuzzedDataProvider) -> None:
    dtype = fdp.PickValueInList(list(dtypes.ALL))
    shape = _shape(fdp)
    text = fdp.ConsumeBool()
    raw = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256))
    if dtype.itemsize and fdp.ConsumeBool() and all(d >= 0 for d in shape) and math.prod(shape) <= 512:
        raw = bytes(dtype.itemsize * math.prod(shape))  # the right length, so the fast path runs
    _check_array(tensors.decode(raw, dtype, shape, "fuzz", text=text), dtype, shape)


def decode_strings(fdp: atheris.FuzzedDataProvider) -> None:
    """BYTES elements: well-formed length prefixes with lies mixed in, or plain noise."""
    count = fdp.ConsumeIntInRange(0, 6)
    parts: list[bytes] = []
    for _ in range(count):
        body = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 8))
        claimed = len(body) if fdp.ConsumeBool() else fdp.ConsumeIntInRange(0, 0xFFFFFFFF)
        parts.append(claimed.to_bytes(4, "little") + body)
    raw = b"".join(parts) + fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 3))
    shape = [count] if fdp.ConsumeBool() else _shape(fdp)
    array = tensors.decode(raw, dtypes.BYTES, shape, "fuzz", text=fdp.ConsumeBool())
    _check_array(array, dtypes.BYTES, shape)
    typed = [fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6)) for _ in range(fdp.ConsumeIntInRange(0, 4))]
    assert tensors.text_array(typed, "fuzz").shape == (len(typed),)


def _parameter(fdp: atheris.FuzzedDataProvider, param: oip.InferParameter) -> None:
    choice = fdp.ConsumeIntInRange(0, 5)
    if choice == 0:
        param.bool_param = fdp.ConsumeBool()
    elif choice == 1:
        param.int64_param = fdp.ConsumeIntInRange(-INT64_MAX - 1, INT64_MAX)
    elif choice == 2:
        param.string_param = fdp.ConsumeUnicodeNoSurrogates(8)
    elif choice == 3:
        param.double_param = fdp.ConsumeRegularFloat()
    elif choice == 4:
        param.uint64_param = fdp.ConsumeIntInRange(0, (1 << 64) - 1)
    # 5: an empty parameter, no choice set


def _contents(fdp: atheris.FuzzedDataProvider, contents: oip.InferTensorContents) -> None:
    n = fdp.ConsumeIntInRange(0, 6)
    field = fdp.ConsumeIntInRange(0, 7)
    if field == 0:
        contents.bool_contents.extend(fdp.ConsumeBool() for _ in range(n))
    elif field == 1:
        contents.int_contents.extend(fdp.ConsumeIntInRange(-(1 << 31), (1 << 31) - 1) for _ in range(n))
    elif field == 2:
        contents.int64_contents.extend(fdp.ConsumeIntInRange(-INT64_MAX - 1, INT64_MAX) for _ in range(n))
    elif field == 3:
        contents.uint_contents.extend(fdp.ConsumeIntInRange(0, (1 << 32) - 1) for _ in range(n))
    elif field == 4:
        contents.uint64_contents.extend(fdp.ConsumeIntInRange(0, (1 << 64) - 1) for _ in range(n))
    elif field == 5:
        contents.fp32_contents.extend(fdp.ConsumeFloatListInRange(n, -1e6, 1e6))
    elif field == 6:
        contents.fp64_contents.extend(fdp.ConsumeFloatList(n))
    else:
        contents.bytes_contents.extend(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 6)) for _ in range(n))


def _infer_request(fdp: atheris.FuzzedDataProvider) -> oip.ModelInferRequest:
    request = oip.ModelInferRequest(model_name=fdp.PickValueInList(["m", "", "linear"]))
    raw = fdp.ConsumeBool()
    for i in range(fdp.ConsumeIntInRange(0, 3)):
        tensor = request.inputs.add(name=fdp.PickValueInList([f"x{i}", "x0", ""]))
        tensor.datatype = fdp.PickValueInList(DATATYPES)
        tensor.shape.extend(_shape(fdp))
        if raw or fdp.ConsumeIntInRange(0, 9) == 0:
            request.raw_input_contents.append(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64)))
        if not raw or fdp.ConsumeIntInRange(0, 9) == 0:
            _contents(fdp, tensor.contents)
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        _parameter(fdp, request.parameters[fdp.PickValueInList(PARAM_KEYS)])
    for _ in range(fdp.ConsumeIntInRange(0, 2)):
        output = request.outputs.add(name=fdp.PickValueInList(["y", ""]))
        if fdp.ConsumeBool():
            _parameter(fdp, output.parameters[fdp.PickValueInList(["classification", "binary_data"])])
    return request


def _check_call(call_feeds: dict[str, np.ndarray], inputs: list[tuple[str, list[int]]]) -> None:
    shapes = dict(inputs)
    for name, array in call_feeds.items():
        assert list(array.shape) == shapes[name], (name, array.shape, shapes[name])


def oip_request(fdp: atheris.FuzzedDataProvider) -> None:
    if fdp.ConsumeBool():
        request = _infer_request(fdp)
    else:
        try:
            request = oip.ModelInferRequest.FromString(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512)))
        except DecodeError:
            return
    timeout = fdp.PickValueInList([None, 0.0, 1.5])
    call = oip_convert.predict_call(request, timeout)
    _check_call(dict(call.feeds), [(t.name, list(t.shape)) for t in request.inputs])
    oip_convert.wants_final_flag(request)


def oip_contents(fdp: atheris.FuzzedDataProvider) -> None:
    dtype = fdp.PickValueInList(list(dtypes.ALL))
    contents = oip.InferTensorContents()
    _contents(fdp, contents)
    shape = _shape(fdp)
    array = oip_convert.array_from_contents(contents, dtype, shape, "m", "x")
    assert list(array.shape) == shape


def predict_request(fdp: atheris.FuzzedDataProvider) -> None:
    if fdp.ConsumeBool():
        request = ipb.PredictRequest(model=fdp.PickValueInList(["m", ""]))
        request.timeout_us = fdp.ConsumeIntInRange(0, (1 << 64) - 1)
        request.priority = fdp.ConsumeIntInRange(0, (1 << 32) - 1)
        for i in range(fdp.ConsumeIntInRange(0, 3)):
            tensor = request.inputs.add(name=fdp.PickValueInList([f"x{i}", "x0"]))
            tensor.data_type = fdp.ConsumeIntInRange(-2, 16)
            tensor.shape.extend(_shape(fdp))
            tensor.raw_data = fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 64))
    else:
        try:
            request = ipb.PredictRequest.FromString(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 512)))
        except DecodeError:
            return
    call = convert.predict_call(request, fdp.PickValueInList([None, 0.5]))
    _check_call(dict(call.feeds), [(t.name, list(t.shape)) for t in request.inputs])


def tensor_message(fdp: atheris.FuzzedDataProvider) -> None:
    try:
        tensor = tpb.Tensor.FromString(fdp.ConsumeBytes(fdp.ConsumeIntInRange(0, 256)))
    except DecodeError:
        return
    array = convert.array_from_tensor(tensor, "m")
    assert list(array.shape) == list(tensor.shape)


def datatype_name(fdp: atheris.FuzzedDataProvider) -> None:
    name = fdp.ConsumeUnicodeNoSurrogates(8) if fdp.ConsumeBool() else fdp.PickValueInList(DATATYPES)
    assert dtypes.by_name(name, "fuzz").name == name


TARGETS: list[Callable[[atheris.FuzzedDataProvider], None]] = [
    decode_raw,
    decode_strings,
    oip_request,
    oip_contents,
    predict_request,
    tensor_message,
    datatype_name,
]


def test_one_input(data: bytes) -> None:
    fdp = atheris.FuzzedDataProvider(data)
    target = TARGETS[fdp.ConsumeIntInRange(0, len(TARGETS) - 1)]
    with contextlib.suppress(OrtserveError):  # a domain error is a correct answer
        target(fdp)


def main() -> None:
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
