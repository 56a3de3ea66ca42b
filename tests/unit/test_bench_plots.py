"""bench/plots.py: the data behind the benchmark chart (lines per model and target, points by
concurrency), and that a chart file is written; not its pixels."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.unit.test_bench import _bench_module

plots = _bench_module("plots")


@dataclass
class Run:
    model: str
    kind: str
    concurrency: int
    protocol: str = "ortserve"
    served_as: str = ""
    batched_ceiling: bool = False
    result: dict[str, Any] = field(default_factory=dict)


def done(rps: float, p99: float) -> dict[str, Any]:
    return {"rows_per_s": rps, "throughput_rps": rps, "latency_ms": {"p50": p99 / 2, "p99": p99}}


RUNS = [
    Run("tiny", "ort", 1, result=done(90000, 0.02)),
    Run("tiny", "echo", 64, "echo", result=done(2400, 40)),
    Run("tiny", "server", 64, result=done(1700, 50)),
    Run("tiny", "echo", 1, "echo", result=done(1100, 1.2)),
    Run("tiny", "server", 1, result=done(900, 1.5)),
    Run("tiny", "server", 64, "oip", result=done(1600, 55)),
    Run("tiny", "server", 64, "ortserve-stream", result=done(3000, 30)),
    Run("wide", "server", 64, served_as="wide-nobatch", result=done(220, 300)),
    Run("wide", "server", 64, result=done(1000, 70)),
    Run("cnn", "ort", 16, batched_ceiling=True, result=done(1500, 12)),
    Run("cnn", "server", 16),  # not run: no result
]


def test_lines_group_by_model_and_target_with_points_by_concurrency() -> None:
    lines = plots.lines(RUNS)
    summary = [
        (line.model, line.target, [(p.concurrency, p.rows_per_s, p.p99_ms) for p in line.points])
        for line in lines
    ]
    assert summary == [
        ("tiny", "ONNX Runtime in-process", [(1, 90000.0, 0.02)]),
        ("tiny", "echo ceiling unary", [(1, 1100.0, 1.2), (64, 2400.0, 40.0)]),
        ("tiny", "ortserve Predict", [(1, 900.0, 1.5), (64, 1700.0, 50.0)]),
        ("tiny", "ortserve ModelInfer (OIP)", [(64, 1600.0, 55.0)]),
        ("tiny", "ortserve PredictStream", [(64, 3000.0, 30.0)]),
        ("wide", "ortserve Predict, batching off", [(64, 220.0, 300.0)]),
        ("wide", "ortserve Predict", [(64, 1000.0, 70.0)]),
        ("cnn", "ONNX Runtime in-process, 1 call of C rows", [(16, 1500.0, 12.0)]),
    ]
    assert list(plots.by_model(lines)) == ["tiny", "wide", "cnn"]


def test_no_results_give_no_lines() -> None:
    assert plots.lines([Run("tiny", "server", 1)]) == []


def test_the_chart_is_written_as_a_png(tmp_path: Path) -> None:
    path = tmp_path / "bench.png"
    plots.plot(plots.lines(RUNS), path, "a test run")
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
