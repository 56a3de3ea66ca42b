"""Tensor bytes on the wire: row-major little-endian raw data, BYTES as length-prefixed elements.

Numpy only, shared by the server and the client SDK. Decoding fixed-size types is zero-copy
(`np.frombuffer` over the message's bytes, read-only).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Sequence

import numpy as np

from ortserve.dtypes import BYTES, DType
from ortserve.errors import InvalidInput

_LEN = struct.Struct("<I")
MAX_ELEMENTS = 1 << 31
MAX_RANK = 32  # numpy 1.x shapes at most 32 dimensions (2.x: 64); no model needs more


def element_count(shape: Sequence[int], what: str) -> int:
    """Product of `shape`, rejecting negative dimensions, too many of them and absurd sizes.

    A zero-size shape counts too: its other dimensions may not multiply past MAX_ELEMENTS either
    (numpy cannot make such an array, empty or not).
    """
    if len(shape) > MAX_RANK:
        raise InvalidInput(f"{what}: shape has {len(shape)} dimensions, more than {MAX_RANK}")
    count = extent = 1
    for dim in shape:
        if dim < 0:
            raise InvalidInput(f"{what}: shape {list(shape)} has a negative dimension")
        count *= dim
        extent *= dim or 1
    if extent > MAX_ELEMENTS:
        size = f"has {count} elements" if count else f"spans {extent} elements in its non-zero dimensions"
        raise InvalidInput(f"{what}: shape {list(shape)} {size}, more than {MAX_ELEMENTS}")
    return count


def decode(raw: bytes, dtype: DType, shape: Sequence[int], what: str, *, text: bool = False) -> np.ndarray:
    """The array that `raw` encodes; InvalidInput naming `what` when the size does not match.

    BYTES elements are bytes, or UTF-8 decoded str with `text` (ONNX Runtime takes str only).
    Fixed-size elements come back as a read-only view of `raw`, without a copy.
    """
    # The fast path takes non-empty data of the right size; numpy rejects negative dimensions.
    # Empty data goes the long way: numpy accepts some zero-size shapes that element_count does not.
    if dtype.itemsize and raw and len(shape) <= MAX_RANK and len(raw) == dtype.itemsize * math.prod(shape):
        try:
            return np.ndarray(tuple(shape), dtype.wire, raw)
        except ValueError:  # an even number of negative dimensions: the checks below name it
            pass
    count = element_count(shape, what)
    if dtype is BYTES:
        return _decode_bytes(raw, count, what, text).reshape(shape)
    expected = count * dtype.itemsize
    if len(raw) != expected:
        raise InvalidInput(
            f"{what}: raw data is {len(raw)} bytes but shape {list(shape)} of {dtype.name} "
            f"needs {expected} bytes"
        )
    return np.frombuffer(raw, dtype=dtype.wire).reshape(shape)


def _decode_bytes(raw: bytes, count: int, what: str, text: bool) -> np.ndarray:
    if count * _LEN.size > len(raw):  # before allocating `count` object pointers
        raise InvalidInput(
            f"{what}: BYTES data is {len(raw)} bytes, too short for {count} elements "
            f"of at least {_LEN.size} bytes each"
        )
    out = np.empty(count, dtype=object)
    view = memoryview(raw)
    pos = 0
    for i in range(count):
        if pos + 4 > len(raw):
            raise InvalidInput(f"{what}: BYTES data ends after {i} of {count} elements")
        (size,) = _LEN.unpack_from(view, pos)
        pos += 4
        if pos + size > len(raw):
            raise InvalidInput(f"{what}: BYTES element {i} claims {size} bytes past the end of the data")
        out[i] = _text(view[pos : pos + size], i, what) if text else bytes(view[pos : pos + size])
        pos += size
    if pos != len(raw):
        raise InvalidInput(f"{what}: {len(raw) - pos} trailing bytes after {count} BYTES elements")
    return out


def text_array(items: Sequence[bytes], what: str) -> np.ndarray:
    """A 1-D object array of the UTF-8 decoded `items` (for typed BYTES contents)."""
    out = np.empty(len(items), dtype=object)
    for i, item in enumerate(items):
        out[i] = _text(memoryview(item), i, what)
    return out


def _text(data: memoryview, index: int, what: str) -> str:
    try:
        return str(data, "utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"{what}: BYTES element {index} is not valid UTF-8 ({exc.reason} at byte {exc.start})"
        ) from None


def encode(array: np.ndarray) -> bytes:
    """Raw wire bytes of `array` (one copy; none more when it is already contiguous little-endian)."""
    if array.dtype.kind in "OUS":
        return encode_strings(array.ravel())
    if array.dtype.byteorder == ">":
        array = array.astype(array.dtype.newbyteorder("<"))
    return np.ascontiguousarray(array).tobytes()


def encode_strings(items: np.ndarray | Sequence[object]) -> bytes:
    """Length-prefixed concatenation; str is UTF-8 encoded, other non-bytes objects via str()."""
    parts: list[bytes] = []
    for item in items:
        data = item if isinstance(item, bytes) else str(item).encode("utf-8")
        parts.append(_LEN.pack(len(data)))
        parts.append(data)
    return b"".join(parts)
