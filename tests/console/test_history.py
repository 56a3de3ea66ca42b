"""Rates and p99 from the server's own loop metrics, over a ring of readings (a clock the test moves)."""

from __future__ import annotations

import pytest

from ortserve.console.history import MetricsHistory, quantile
from ortserve.server.metrics import Metrics


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def history(metrics: Metrics, clock: Clock, window_s: float = 300.0) -> MetricsHistory:
    return MetricsHistory(
        metrics.request_seconds.collect,
        metrics.errors.collect,
        interval_s=5.0,
        window_s=window_s,
        clock=clock,
    )


def test_quantile_interpolates_within_its_bucket_like_histogram_quantile() -> None:
    bounds = (0.1, 0.2, 0.4)
    assert quantile(0.5, bounds, (0.0, 10.0, 10.0, 10.0)) == pytest.approx(0.15)
    assert quantile(0.99, bounds, (50.0, 100.0, 100.0, 100.0)) == pytest.approx(0.198)
    assert quantile(0.99, bounds, (0.0, 0.0, 0.0, 5.0)) == 0.4  # all above: the highest finite bound
    assert quantile(0.99, bounds, (0.0, 0.0, 0.0, 0.0)) is None


async def test_rates_and_p99_per_version_over_the_window() -> None:
    metrics, clock = Metrics(), Clock()
    ring = history(metrics, clock)
    assert (await ring.rates()) == {}
    await ring.sample()
    version = metrics.for_version("linear", 1)
    for _ in range(99):
        version.finished(0.001, 0, "OK")
    version.finished(5.0, 0, "OK")
    for _ in range(3):
        version.finished(0.002, 0, "INVALID_ARGUMENT")
    metrics.for_version("add", 1).finished(0.0001, 0, "OK")
    clock.now += 10

    rates = await ring.rates()
    linear = rates["linear", "1"]
    assert linear.requests_per_s == pytest.approx(10.3)
    assert linear.errors_per_s == pytest.approx(0.3)
    assert linear.p99_s == pytest.approx(0.00199)  # rank 101.97 of 103: in (0.001, 0.002], 2.97 of 3
    assert linear.window_s == 10
    assert rates["add", "1"].requests_per_s == pytest.approx(0.1)


async def test_requests_older_than_the_window_drop_out() -> None:
    metrics, clock = Metrics(), Clock()
    ring = history(metrics, clock, window_s=20.0)  # 5 readings, 5 s apart
    version = metrics.for_version("linear", 1)
    await ring.sample()
    for _ in range(50):
        version.finished(0.001, 0, "OK")
    for _ in range(5):
        clock.now += 5
        await ring.sample()
    assert (await ring.rates())["linear", "1"].requests_per_s == 0
    assert (await ring.rates())["linear", "1"].p99_s is None
    assert ring.span_s() == 20


async def test_a_version_whose_series_restarted_counts_from_zero() -> None:
    metrics, clock = Metrics(), Clock()
    ring = history(metrics, clock)
    version = metrics.for_version("linear", 1)
    for _ in range(10):
        version.finished(0.001, 0, "OK")
    await ring.sample()
    version.close()  # retired: its series are removed, then the version comes back
    again = metrics.for_version("linear", 1)
    for _ in range(4):
        again.finished(0.001, 0, "OK")
    clock.now += 2
    assert (await ring.rates())["linear", "1"].requests_per_s == pytest.approx(2.0)
