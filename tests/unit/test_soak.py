"""The soak's growth check (bench/soak.py) over made-up samples: flat passes, each kind of growth fails."""

from __future__ import annotations

from dataclasses import replace

import pytest

from tests.unit.test_bench import _bench_module

soak = _bench_module("soak")
MiB = 1 << 20
WARMUP_S = 120.0


def run(rss_mib_per_min: float = 0.0, fds_per_min: float = 0.0, tasks_per_min: float = 0.0) -> list:
    """Ten minutes of samples every 10 s, quiet ones at 2 and 10 minutes, growing as asked after warm-up."""
    samples = []
    for t in range(0, 601, 10):
        minutes = max(0.0, (t - WARMUP_S) / 60)
        phase = "warmup" if t < WARMUP_S else "load"
        samples.append(
            soak.Sample(
                float(t),
                phase,
                int((200 + rss_mib_per_min * minutes) * MiB) + (t % 30) * 4096,  # some noise
                40 + int(fds_per_min * minutes),
                30 + int(tasks_per_min * minutes) + (t // 10) % 3,  # RPCs in flight at sample time
                16,
            )
        )
    quiet_start = replace(samples[12], phase="quiet", tasks=30)
    quiet_end = replace(samples[-1], phase="quiet", tasks=30 + int(tasks_per_min * 8))
    return [*samples[:12], quiet_start, *samples[12:], quiet_end]


def test_flat_samples_are_within_bounds() -> None:
    assert soak.check_growth(run(rss_mib_per_min=0.5), WARMUP_S, soak.Bounds()) == []


@pytest.mark.parametrize(
    ("growth", "expected"),
    [
        ({"rss_mib_per_min": 10.0}, "RSS grows 10.00 MiB/min after warm-up; the bound is 2.0 MiB/min"),
        ({"fds_per_min": 1.5}, "open fds at rest: 40 after warm-up, 52 at the end (slack 8)"),
        ({"tasks_per_min": 1.0}, "asyncio tasks at rest: 30 after warm-up, 38 at the end (slack 2)"),
        ({"fds_per_min": 4.0}, "open fds under load: at most 40 in warm-up, 72 after (slack 16)"),
    ],
)
def test_growth_beyond_a_bound_is_named(growth: dict[str, float], expected: str) -> None:
    assert expected in soak.check_growth(run(**growth), WARMUP_S, soak.Bounds())


def test_a_step_in_rss_fails_the_total_growth_bound() -> None:
    samples = run()
    stepped = [replace(s, rss_bytes=s.rss_bytes + 40 * MiB) if s.t_s >= 590 else s for s in samples]
    assert soak.check_growth(stepped, WARMUP_S, soak.Bounds()) == [
        "RSS grew 40.0 MiB after warm-up; the bound is 32.0 MiB"
    ]


def test_too_few_samples_is_a_failure_not_a_pass() -> None:
    assert soak.check_growth(run()[:5], WARMUP_S, soak.Bounds())[0].startswith("too few samples to judge")


def test_slope_is_per_minute() -> None:
    assert soak.slope_per_min([(0.0, 1.0), (60.0, 3.0), (120.0, 5.0)]) == pytest.approx(2.0)
    assert soak.slope_per_min([(5.0, 1.0)]) == 0.0
