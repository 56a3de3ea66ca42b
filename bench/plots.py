"""The chart bench/run_all.py writes beside its report: throughput and p99 latency against
concurrency, one line per target (ortserve by protocol, the echo ceiling, in-process ONNX Runtime)
and one row of panels per model.

`lines` prepares the data from the run's scenarios (tested in tests/unit/test_bench_plots.py);
`plot` draws it with matplotlib's Agg backend (no display needed).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

PROTOCOLS = {
    "echo": "unary",
    "ortserve": "Predict",
    "oip": "ModelInfer (OIP)",
    "ortserve-stream": "PredictStream",
}


class RunScenario(Protocol):
    """What the chart reads of a bench/run_all.py Scenario."""

    model: str
    served_as: str
    kind: str
    protocol: str
    concurrency: int
    batched_ceiling: bool
    result: dict[str, Any]


@dataclass(frozen=True)
class Point:
    concurrency: int
    rows_per_s: float  # requests/s where each request is one row, as in every bench scenario
    p99_ms: float


@dataclass(frozen=True)
class Line:
    model: str
    target: str
    points: tuple[Point, ...]


def target(s: RunScenario) -> str:
    """The legend of a scenario's line: what answered, and how it was called."""
    if s.kind == "ort":
        return "ONNX Runtime in-process, 1 call of C rows" if s.batched_ceiling else "ONNX Runtime in-process"
    server = {"echo": "echo ceiling", "kserve": "KServe", "mlserver": "MLServer"}.get(s.kind, "ortserve")
    name = f"{server} {PROTOCOLS.get(s.protocol, s.protocol)}"
    if s.served_as.endswith("-nobatch"):
        name += ", batching off"
    return name


def lines(scenarios: Iterable[RunScenario]) -> list[Line]:
    """One line per (model, target), its points by concurrency; models and targets in run order.
    Scenarios without a result (not run, or failed) are left out."""
    grouped: dict[tuple[str, str], dict[int, Point]] = {}
    for s in scenarios:
        if not s.result:
            continue
        point = Point(s.concurrency, float(s.result["rows_per_s"]), float(s.result["latency_ms"]["p99"]))
        grouped.setdefault((s.model, target(s)), {})[s.concurrency] = point
    return [
        Line(model, name, tuple(points[c] for c in sorted(points)))
        for (model, name), points in grouped.items()
    ]


def by_model(prepared: Iterable[Line]) -> dict[str, list[Line]]:
    models: dict[str, list[Line]] = {}
    for line in prepared:
        models.setdefault(line.model, []).append(line)
    return models


def plot(prepared: list[Line], path: Path, title: str) -> None:
    """Write the chart as a PNG: per model, rows/s and p99 ms against concurrency (log scales)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    models = by_model(prepared)
    fig, axes = plt.subplots(len(models), 2, figsize=(10, 1.0 + 2.8 * len(models)), squeeze=False)
    for row, (model, model_lines) in zip(axes, models.items(), strict=True):
        for ax, (label, value) in zip(row, _MEASURES.items(), strict=True):
            for line in model_lines:
                xs = [p.concurrency for p in line.points]
                ax.plot(xs, [value(p) for p in line.points], marker="o", linewidth=1.2, label=line.target)
            ax.set_title(f"{model}: {label}", fontsize=9)
            _axes_style(ax, sorted({p.concurrency for line in model_lines for p in line.points}))
        row[1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


_MEASURES: Mapping[str, Any] = {
    "throughput (rows/s = req/s)": lambda p: p.rows_per_s,
    "p99 latency (ms)": lambda p: p.p99_ms,
}


def _axes_style(ax: Any, concurrencies: list[int]) -> None:
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(concurrencies, [str(c) for c in concurrencies])
    ax.set_xlabel("concurrency C (requests in flight)", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3, which="both")
