"""Latency percentiles and the result summary of one load-generator run (pure; no I/O)."""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

PERCENTILES = (50.0, 90.0, 99.0)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """The q-th percentile (0..100) of ascending values, linearly interpolated (numpy's default).

    NaN for no values.
    """
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile must be in 0..100, got {q}")
    n = len(sorted_values)
    if n == 0:
        return math.nan
    pos = (n - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, n - 1)
    frac = pos - lo
    return float(sorted_values[lo]) + (float(sorted_values[hi]) - float(sorted_values[lo])) * frac


@dataclass(frozen=True, slots=True)
class ServerTiming:
    """What responses said about the server side (ortserve only): means and p50 in microseconds."""

    samples: int
    queue_us_mean: float
    compute_us_mean: float
    compute_us_p50: float
    compute_us_p99: float
    # queue + compute per request as the server timed it: the batcher's share of the latency
    in_server_us_p99: float
    batch_size_mean: float
    batch_size_max: int


@dataclass(frozen=True, slots=True)
class Summary:
    """One run: throughput over the measured window, latency of successful requests, errors by code."""

    requests: int
    errors: int
    errors_by_code: dict[str, int]
    elapsed_s: float
    throughput_rps: float
    rows_per_s: float
    latency_ms: dict[str, float]
    server: ServerTiming | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["latency_ms"] = {k: _finite(v) for k, v in self.latency_ms.items()}
        return data


def _finite(value: float) -> float | None:
    return None if math.isnan(value) else round(value, 4)


def latency_summary(latencies_ns: Sequence[int]) -> dict[str, float]:
    """p50/p90/p99/max/mean in milliseconds."""
    values = sorted(latencies_ns)
    out = {f"p{q:g}": percentile(values, q) / 1e6 for q in PERCENTILES}
    out["max"] = values[-1] / 1e6 if values else math.nan
    out["mean"] = sum(values) / len(values) / 1e6 if values else math.nan
    return out


def server_timing(
    queue_us: Sequence[int], compute_us: Sequence[int], batch_sizes: Sequence[int]
) -> ServerTiming | None:
    if not compute_us:
        return None
    n = len(compute_us)
    compute_sorted = sorted(compute_us)
    return ServerTiming(
        samples=n,
        queue_us_mean=sum(queue_us) / max(1, len(queue_us)),
        compute_us_mean=sum(compute_us) / n,
        compute_us_p50=percentile(compute_sorted, 50.0),
        compute_us_p99=percentile(compute_sorted, 99.0),
        in_server_us_p99=percentile(sorted(q + c for q, c in zip(queue_us, compute_us, strict=False)), 99.0),
        batch_size_mean=sum(batch_sizes) / max(1, len(batch_sizes)),
        batch_size_max=max(batch_sizes, default=0),
    )


def summarize(
    latencies_ns: Sequence[int],
    elapsed_s: float,
    *,
    rows_per_request: int = 1,
    errors_by_code: Mapping[str, int] | None = None,
    server: ServerTiming | None = None,
    extra: Mapping[str, Any] | None = None,
) -> Summary:
    """Summarize a measured window: `latencies_ns` holds one entry per successful request."""
    if elapsed_s <= 0:
        raise ValueError(f"elapsed_s must be > 0, got {elapsed_s}")
    errors = dict(sorted((errors_by_code or {}).items()))
    ok = len(latencies_ns)
    return Summary(
        requests=ok,
        errors=sum(errors.values()),
        errors_by_code=errors,
        elapsed_s=elapsed_s,
        throughput_rps=ok / elapsed_s,
        rows_per_s=ok * rows_per_request / elapsed_s,
        latency_ms=latency_summary(latencies_ns),
        server=server,
        extra=dict(extra or {}),
    )


@dataclass(slots=True)
class Samples:
    """The raw measurements behind one run's summary: what merging several runs needs, since
    percentiles of percentiles are not percentiles."""

    latencies_ns: list[int] = field(default_factory=list)
    queue_us: list[int] = field(default_factory=list)
    compute_us: list[int] = field(default_factory=list)
    batch_sizes: list[int] = field(default_factory=list)


def merge_results(results: Sequence[Mapping[str, Any]], samples: Sequence[Samples]) -> dict[str, Any]:
    """One result from the runs of several load processes over the same window.

    Counts, throughputs and client CPU add up; latency percentiles and the server block are
    computed again over all raw samples; the window is where all runs measured at once; elapsed_s is
    the mean. The per-process counts stay under "by_process", to show how evenly the load spread.
    """
    if not results or len(results) != len(samples):
        raise ValueError(f"need one Samples per result, got {len(results)} results, {len(samples)} samples")
    errors: dict[str, int] = {}
    for result in results:
        for code, n in result["errors_by_code"].items():
            errors[code] = errors.get(code, 0) + n
    summary = Summary(
        requests=sum(r["requests"] for r in results),
        errors=sum(errors.values()),
        errors_by_code=dict(sorted(errors.items())),
        elapsed_s=sum(r["elapsed_s"] for r in results) / len(results),
        throughput_rps=sum(r["throughput_rps"] for r in results),
        rows_per_s=sum(r["rows_per_s"] for r in results),
        latency_ms=latency_summary([x for s in samples for x in s.latencies_ns]),
        server=server_timing(*(_joined(samples, name) for name in ("queue_us", "compute_us", "batch_sizes"))),
    )
    merged = {**results[0], **summary.as_dict()}
    merged["concurrency"] = sum(r["concurrency"] for r in results)
    merged["processes"] = len(results)
    merged["streams"] = _sum_or_none(r["streams"] for r in results)
    merged["requests_target"] = _sum_or_none(r["requests_target"] for r in results)
    merged["window_unix"] = [
        max(r["window_unix"][0] for r in results),
        min(r["window_unix"][1] for r in results),
    ]
    merged["client_cpu_cores"] = _sum_or_none(r["client_cpu_cores"] for r in results)
    merged["by_process"] = [
        {key: r[key] for key in ("concurrency", "requests", "errors", "throughput_rps")} for r in results
    ]
    return merged


def _joined(samples: Sequence[Samples], name: str) -> list[int]:
    return [x for s in samples for x in getattr(s, name)]


def _sum_or_none(values: Iterable[float | None]) -> float | None:
    """The sum, or None when any part is unknown (a count or core figure of only some processes)."""
    items = list(values)
    if any(value is None for value in items):
        return None
    return sum(value for value in items if value is not None)
