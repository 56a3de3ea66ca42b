"""Warm-up inputs generated from a signature: one row, variable dimensions set to 1."""

from __future__ import annotations

import numpy as np

from ortserve.dtypes import BYTES
from ortserve.signature import Signature


def sample_feeds(signature: Signature, rows: int = 1) -> dict[str, np.ndarray]:
    """Deterministic inputs that match `signature`, with `rows` on a batch axis."""
    rng = np.random.default_rng(0)
    feeds: dict[str, np.ndarray] = {}
    for spec in signature.inputs:
        shape = tuple(
            (rows if axis == 0 and signature.batch_axis else 1) if dim < 0 else dim
            for axis, dim in enumerate(spec.shape)
        )
        if spec.dtype is BYTES:
            feeds[spec.name] = np.full(shape, "warmup", dtype=object)
        elif spec.dtype.numpy.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape).astype(spec.dtype.numpy)
        elif spec.dtype.numpy.kind == "b":
            feeds[spec.name] = np.zeros(shape, dtype=np.bool_)
        else:
            feeds[spec.name] = np.ones(shape, dtype=spec.dtype.numpy)
    return feeds
