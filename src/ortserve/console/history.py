"""Request rate, error rate and p99 per version over the last minutes, from the server's own metrics.

A background task reads the in-memory request-duration histogram and request-error counter every
few seconds into a small ring of readings; a page compares the live values with the oldest reading
in the ring. No Prometheus query, and nothing on the hot path. Readings are taken in a thread, as a
scrape reads the loop's metrics (22 ms for 400 versions: too long to hold up the event loop).
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from prometheus_client.core import Metric

Key = tuple[str, str]  # (model, version)

INTERVAL_S = 5.0
WINDOW_S = 300.0


@dataclass(frozen=True, slots=True)
class Reading:
    at: float
    bounds: tuple[float, ...]  # the histogram's finite upper bounds; counts has one more (+Inf)
    counts: Mapping[Key, tuple[float, ...]]  # cumulative bucket counts per version
    errors: Mapping[Key, float]


@dataclass(frozen=True, slots=True)
class Rates:
    """One version over `window_s` seconds: requests and errors per second, p99 in seconds."""

    requests_per_s: float
    errors_per_s: float
    p99_s: float | None
    window_s: float


class MetricsHistory:
    """A ring of readings of `requests` (a histogram family) and `errors` (a counter family), each
    read through its `collect()`."""

    def __init__(
        self,
        requests: Callable[[], Metric],
        errors: Callable[[], Metric],
        *,
        interval_s: float = INTERVAL_S,
        window_s: float = WINDOW_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._requests = requests
        self._errors = errors
        self._clock = clock
        self.interval_s = interval_s
        self._ring: deque[Reading] = deque(maxlen=max(2, math.ceil(window_s / interval_s) + 1))

    async def sample(self) -> None:
        self._ring.append(await asyncio.to_thread(self.read))

    async def run(self) -> None:
        """Sample every interval until cancelled."""
        while True:
            await self.sample()
            await asyncio.sleep(self.interval_s)

    def read(self) -> Reading:
        bounds: tuple[float, ...] = ()
        counts: dict[Key, tuple[float, ...]] = {}
        buckets: dict[Key, list[tuple[float, float]]] = {}
        for sample in self._requests().samples:
            if sample.name.endswith("_bucket"):
                key = (sample.labels["model"], sample.labels["version"])
                buckets.setdefault(key, []).append((float(sample.labels["le"]), sample.value))
        for key, pairs in buckets.items():
            pairs.sort()
            bounds = tuple(le for le, _ in pairs[:-1])
            counts[key] = tuple(count for _, count in pairs)
        errors: dict[Key, float] = {}
        for sample in self._errors().samples:
            if sample.name.endswith("_total"):
                key = (sample.labels["model"], sample.labels["version"])
                errors[key] = errors.get(key, 0.0) + sample.value
        return Reading(self._clock(), bounds, counts, errors)

    def span_s(self) -> float:
        """Seconds between the oldest reading kept and now."""
        return self._clock() - self._ring[0].at if self._ring else 0.0

    async def rates(self) -> dict[Key, Rates]:
        """Every version's rates between the oldest reading kept and now; empty before any reading."""
        if not self._ring:
            return {}
        now, then = await asyncio.to_thread(self.read), self._ring[0]
        elapsed = now.at - then.at
        if elapsed <= 0:
            return {}
        rates = {}
        for key, counts in now.counts.items():
            before = then.counts.get(key, (0.0,) * len(counts))
            if len(before) != len(counts) or before[-1] > counts[-1]:  # series restarted
                before = (0.0,) * len(counts)
            delta = tuple(c - b for c, b in zip(counts, before, strict=True))
            failed = max(0.0, now.errors.get(key, 0.0) - then.errors.get(key, 0.0))
            rates[key] = Rates(
                delta[-1] / elapsed, failed / elapsed, quantile(0.99, now.bounds, delta), elapsed
            )
        return rates


def quantile(q: float, bounds: tuple[float, ...], cumulative: tuple[float, ...]) -> float | None:
    """The `q` quantile of a histogram with cumulative `cumulative` counts over `bounds` (+Inf last),
    interpolated linearly within its bucket as Prometheus' histogram_quantile does; None when empty.
    A quantile in the +Inf bucket is reported as the highest finite bound."""
    total = cumulative[-1] if cumulative else 0.0
    if total <= 0:
        return None
    rank = q * total
    for index, count in enumerate(cumulative):
        if count >= rank:
            if index >= len(bounds):
                return bounds[-1] if bounds else None
            lower = bounds[index - 1] if index > 0 else 0.0
            below = cumulative[index - 1] if index > 0 else 0.0
            inside = count - below
            return lower + (bounds[index] - lower) * ((rank - below) / inside if inside else 1.0)
    return bounds[-1] if bounds else None
