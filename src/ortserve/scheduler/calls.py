"""What the servicers hand the core and get back: numpy in, numpy out."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True, slots=True, kw_only=True)
class PredictCall:
    model: str
    selector: str
    feeds: Mapping[str, np.ndarray]
    outputs: Sequence[str] = ()
    routing_key: str = ""
    priority: int = 0
    # Seconds left for this request (gRPC deadline or the request's timeout), None: no limit.
    timeout_s: float | None = None


@dataclass(frozen=True, slots=True)
class Timing:
    queue_ns: int
    compute_ns: int
    batch_size: int
    provider: str


@dataclass(frozen=True, slots=True)
class PredictResult:
    model: str
    version: int
    outputs: Mapping[str, np.ndarray]
    timing: Timing


@dataclass(frozen=True, slots=True)
class BatchSpan:
    """One batch as the batcher saw it (monotonic nanoseconds)."""

    taken_ns: int
    ns: tuple[int, int, int]  # stack, run, split
    rows: int
    reason: str
    error: BaseException | None = None
