"""Online model of compute time per batch size, for deadline-aware batching."""

from __future__ import annotations

import bisect

ALPHA = 0.2  # weight of the newest sample in the moving average
MIN_SAMPLES = 3


class LatencyModel:
    """Exponential moving averages of compute time per observed batch size (nanoseconds).

    `estimate(rows)` interpolates linearly between the nearest observed sizes and extrapolates
    proportionally beyond the largest; it is None until MIN_SAMPLES batches were seen.
    """

    def __init__(self) -> None:
        self._sizes: list[int] = []
        self._ns: dict[int, float] = {}
        self._samples = 0

    def observe(self, rows: int, ns: int) -> None:
        """Called on the event loop while execution threads may `estimate`: a size is listed only
        once its time is stored, so a concurrent reader never finds a listed size without one.
        A batch of zero rows says nothing about the cost of rows (and extrapolating from size 0
        would divide by zero): it is not counted."""
        if rows <= 0:
            return
        old = self._ns.get(rows)
        if old is None:
            self._ns[rows] = float(ns)
            bisect.insort(self._sizes, rows)
        else:
            self._ns[rows] = old + ALPHA * (ns - old)
        self._samples += 1

    def estimate(self, rows: int) -> float | None:
        if self._samples < MIN_SAMPLES:
            return None
        sizes = self._sizes
        i = bisect.bisect_left(sizes, rows)
        if i < len(sizes) and sizes[i] == rows:
            return self._ns[rows]
        if i == 0:
            return self._ns[sizes[0]]
        if i == len(sizes):
            largest = sizes[-1]
            return self._ns[largest] * rows / largest
        lo, hi = sizes[i - 1], sizes[i]
        frac = (rows - lo) / (hi - lo)
        return self._ns[lo] + frac * (self._ns[hi] - self._ns[lo])
