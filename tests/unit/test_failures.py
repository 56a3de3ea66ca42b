"""BoundedLog: a few lines per (method, code) and window, then a count of what was left out."""

from __future__ import annotations

from typing import Any

from ortserve.bounded_log import BoundedLog


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_failures_log_a_burst_per_window_then_say_how_many_were_left_out() -> None:
    lines: list[tuple[str, dict[str, Any]]] = []
    clock = Clock()
    log = BoundedLog(lambda event, **fields: lines.append((event, fields)), burst=2, window_s=10, clock=clock)
    for _ in range(1000):
        log("rpc", "/svc/Predict", "RESOURCE_EXHAUSTED", error="queue is full")
    log("rpc", "/svc/Predict", "INVALID_ARGUMENT", error="bad")  # another code has its own window
    assert [e for e, _ in lines] == ["rpc", "rpc", "rpc"]
    clock.now += 10
    log("rpc", "/svc/Predict", "RESOURCE_EXHAUSTED", error="queue is full")
    assert lines[3] == (
        "failures_suppressed",
        {"method": "/svc/Predict", "code": "RESOURCE_EXHAUSTED", "suppressed": 998, "window_s": 10},
    )
    assert lines[4][0] == "rpc"
    assert len(lines) == 5
