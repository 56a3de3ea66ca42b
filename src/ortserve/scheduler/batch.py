"""Pure batch arithmetic: stack requests along axis 0 and split the results back by offsets."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from itertools import pairwise

import numpy as np

Feeds = Mapping[str, np.ndarray]


class RowMismatch(ValueError):
    """A batched output's axis 0 does not hold one row per input row: the model cannot batch."""


def stack(requests: Sequence[Feeds]) -> tuple[dict[str, np.ndarray], list[int]]:
    """Concatenate each input along axis 0; return the feeds and each request's start row.

    A single request passes through without a copy. The offsets end with the total row count.
    """
    first = requests[0]
    offsets = [0]
    for feeds in requests:
        offsets.append(offsets[-1] + _rows(feeds))
    if len(requests) == 1:
        return dict(first), offsets
    return {name: np.concatenate([feeds[name] for feeds in requests], axis=0) for name in first}, offsets


def split(
    outputs: Sequence[np.ndarray], offsets: Sequence[int], names: Sequence[str]
) -> list[list[np.ndarray]]:
    """Slice every output by `offsets`; per request, a list of views in output order.

    Raises RowMismatch when an output's axis 0 does not equal the batch's total rows.
    """
    total = offsets[-1]
    for name, array in zip(names, outputs, strict=True):
        if array.ndim == 0 or array.shape[0] != total:
            shape = list(array.shape)
            raise RowMismatch(
                f"output {name!r} has shape {shape}, expected {total} rows on axis 0 for this batch"
            )
    return [[array[start:end] for array in outputs] for start, end in pairwise(offsets)]


def _rows(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0])


def shape_key(feeds: Feeds, outputs: Sequence[str]) -> tuple[object, ...]:
    """Requests batch together only when names, dtypes, non-batch dims and wanted outputs agree."""
    return (tuple((name, array.dtype.str, array.shape[1:]) for name, array in feeds.items()), tuple(outputs))
