"""Sample inputs of a version: checked against its signature, generated from it, stored as .npz bytes.

STRING (BYTES) tensors are kept as numpy unicode arrays inside the .npz so that loading never needs
pickle; they come back as object arrays of str, as the server's decoders make them.
"""

from __future__ import annotations

import io
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ortserve import dtypes
from ortserve.errors import InvalidInput, OrtserveError
from ortserve.signature import Signature, check_feeds

Samples = Mapping[str, np.ndarray]
MAX_SAMPLE_ROWS = 1024
# STRING samples are stored as fixed-width unicode, 4 bytes a character with every value as long as
# the longest: refused above this, so that one long string among many short ones cannot make a
# request of a few MB allocate GBs.
MAX_STORED_TEXT_BYTES = 64 << 20


def check_samples(signature: Signature, samples: Samples, what: str) -> int:
    """Validate `samples` (every input, dtypes, shapes, rows on axis 0); return the rows.

    `what` names them in messages: "sample inputs", "calibration inputs".
    """
    if not samples:
        raise InvalidInput(f"{what} are empty; expected one array per input: {_inputs(signature)}")
    try:
        rows = check_feeds(signature, samples, "")
    except OrtserveError as exc:
        detail = str(exc).replace("model '' input", "input").replace("model '' ", "the model ")
        raise InvalidInput(f"{what}: {detail}") from None
    if signature.batch_axis and not 1 <= rows <= MAX_SAMPLE_ROWS:
        raise InvalidInput(f"{what} have {rows} rows on axis 0; expected 1 to {MAX_SAMPLE_ROWS}")
    return rows


def generate_samples(signature: Signature, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    """Random inputs matching the signature: `rows` on the batch axis, 1 for other free dimensions."""
    rng = np.random.default_rng(seed)
    out: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(
            rows if axis == 0 and signature.batch_axis else (dim if dim >= 0 else 1)
            for axis, dim in enumerate(spec.shape)
        )
        out[spec.name] = _random(spec.dtype, shape, rng)
    return out


def _random(dtype: dtypes.DType, shape: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    kind = dtype.numpy.kind
    if kind == "f":
        return rng.standard_normal(shape).astype(dtype.numpy)
    if kind in "iu":
        return rng.integers(0, 10, shape).astype(dtype.numpy)
    if kind == "b":
        return rng.integers(0, 2, shape).astype(np.bool_)
    words = np.array(["sample", "Input", "text"], dtype=object)
    return words[rng.integers(0, len(words), shape)]


def take_rows(samples: Samples, rows: int) -> dict[str, np.ndarray]:
    """`rows` rows, repeating the samples along axis 0 as needed (for latency at a batch size)."""
    have = next(iter(samples.values())).shape[0]
    index = np.arange(rows) % have
    return {name: np.ascontiguousarray(array[index]) for name, array in samples.items()}


def to_npz(samples: Samples) -> bytes:
    buffer = io.BytesIO()
    arrays: dict[str, Any] = {name: _storable(name, a) for name, a in samples.items()}
    np.savez(buffer, allow_pickle=False, **arrays)
    return buffer.getvalue()


def from_npz(source: bytes | Path, what: str) -> dict[str, np.ndarray]:
    """Arrays of an .npz file (no pickle); InvalidInput naming `what` when it is not one."""
    try:
        data = io.BytesIO(source) if isinstance(source, bytes) else source
        loaded = np.load(data, allow_pickle=False)
        if not isinstance(loaded, np.lib.npyio.NpzFile):
            raise InvalidInput(f"{what} holds one array (.npy), not an .npz archive of arrays by input name")
        with loaded as archive:
            return {name: _loaded(archive[name]) for name in archive.files}
    except (OSError, ValueError, EOFError) as exc:
        kind = type(exc).__name__
        raise InvalidInput(f"{what} is not a readable .npz file without pickled objects ({kind})") from None


def _storable(name: str, array: np.ndarray) -> np.ndarray:
    if array.dtype != np.dtype(object):
        return array
    texts = [_text(v) for v in array.ravel()]
    longest = max((len(text) for text in texts), default=0)
    stored = 4 * max(longest, 1) * len(texts)
    if stored > MAX_STORED_TEXT_BYTES:
        raise InvalidInput(
            f"STRING input {name!r}: {len(texts)} values stored as long as the longest ({longest} "
            f"characters) take {stored} bytes; the limit is {MAX_STORED_TEXT_BYTES} bytes"
        )
    return np.array(texts, dtype=str).reshape(array.shape)


def _text(value: object) -> str:
    return value.decode("utf-8", "surrogateescape") if isinstance(value, bytes) else str(value)


def _loaded(array: np.ndarray) -> np.ndarray:
    return array.astype(object) if array.dtype.kind == "U" else array


def _inputs(signature: Signature) -> str:
    return ", ".join(s.name for s in signature.inputs)
