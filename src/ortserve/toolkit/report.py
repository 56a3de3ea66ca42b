"""Evaluation reports: a derived version compared with its source, and the gate check (pure numpy)."""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ortserve.errors import FailedPrecondition
from ortserve.toolkit.recipes import Gate


@dataclass(frozen=True, slots=True, kw_only=True)
class OutputComparison:
    name: str
    max_abs_diff: float
    mean_abs_diff: float
    # Share of rows whose argmax over the last axis agrees; None when not classifier-shaped.
    argmax_agreement: float | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "argmax_agreement": self.argmax_agreement,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> OutputComparison:
        return cls(**data)


@dataclass(frozen=True, slots=True, kw_only=True)
class EvaluationReport:
    """Accuracy per output, size ratio and CPU latency ratios (derived / source); 0.0: not measured."""

    outputs: tuple[OutputComparison, ...]
    size_ratio: float
    latency_ratio_batch1: float = 0.0
    latency_ratio_batch32: float = 0.0
    source_latency_ms_batch1: float = 0.0
    source_latency_ms_batch32: float = 0.0
    samples: str = "generated"  # "given" at registration, or "generated" from the signature
    sample_rows: int = 0
    gate: Gate | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "outputs": [o.to_json() for o in self.outputs],
            "size_ratio": self.size_ratio,
            "latency_ratio_batch1": self.latency_ratio_batch1,
            "latency_ratio_batch32": self.latency_ratio_batch32,
            "source_latency_ms_batch1": self.source_latency_ms_batch1,
            "source_latency_ms_batch32": self.source_latency_ms_batch32,
            "samples": self.samples,
            "sample_rows": self.sample_rows,
            "gate": self.gate.to_json() if self.gate else None,
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> EvaluationReport:
        fields = dict(data)
        fields["outputs"] = tuple(OutputComparison.from_json(o) for o in data["outputs"])
        fields["gate"] = Gate.from_json(data["gate"]) if data.get("gate") else None
        return cls(**fields)

    def with_gate(self, gate: Gate | None) -> EvaluationReport:
        return dataclasses.replace(self, gate=gate)


def compare_outputs(
    source: Mapping[str, np.ndarray], derived: Mapping[str, np.ndarray]
) -> tuple[OutputComparison, ...]:
    """Compare each output the source produced with the derived model's output of the same name."""
    return tuple(_compare(name, source[name], derived[name]) for name in source)


def _compare(name: str, want: np.ndarray, got: np.ndarray) -> OutputComparison:
    if want.dtype == np.dtype(object) or not np.issubdtype(want.dtype, np.number):
        unequal = 0.0 if np.array_equal(want, got) else float("inf")
        return OutputComparison(name=name, max_abs_diff=unequal, mean_abs_diff=unequal)
    a, b = want.astype(np.float64), np.asarray(got).astype(np.float64)
    if a.shape != b.shape:
        return OutputComparison(name=name, max_abs_diff=float("inf"), mean_abs_diff=float("inf"))
    diff = np.abs(a - b)
    if diff.size == 0:
        return OutputComparison(name=name, max_abs_diff=0.0, mean_abs_diff=0.0)
    # NaN where the source has a number (or the reverse) counts as an infinite difference.
    diff[np.isnan(diff) & ~(np.isnan(a) & np.isnan(b))] = np.inf
    diff[np.isnan(diff)] = 0.0
    return OutputComparison(
        name=name,
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        argmax_agreement=_agreement(a, b),
    )


def _agreement(a: np.ndarray, b: np.ndarray) -> float | None:
    """Classifier-shaped: rank 2 with more than one class (rows x classes) and at least one row."""
    if a.ndim != 2 or a.shape[1] < 2 or a.shape[0] == 0:
        return None
    return float(np.mean(np.argmax(a, axis=1) == np.argmax(b, axis=1)))


def check_gate(report: EvaluationReport, gate: Gate) -> None:
    """FailedPrecondition naming the first figure that misses the gate, its value and the bound."""
    for out in report.outputs:
        if gate.max_abs_diff is not None and not out.max_abs_diff <= gate.max_abs_diff:
            raise FailedPrecondition(
                f"derived version refused: output {out.name!r} max abs diff {out.max_abs_diff:.6g} "
                f"exceeds --max-abs-diff {gate.max_abs_diff:g}"
            )
    if gate.min_agreement is None:
        return
    rated = [o for o in report.outputs if o.argmax_agreement is not None]
    if not rated:
        raise FailedPrecondition(
            "derived version refused: --min-agreement needs a classifier-shaped output (rank 2, "
            f"more than one class); outputs: {', '.join(o.name for o in report.outputs)}"
        )
    for out in rated:
        assert out.argmax_agreement is not None
        if out.argmax_agreement < gate.min_agreement:
            raise FailedPrecondition(
                f"derived version refused: output {out.name!r} argmax agreement {out.argmax_agreement:.4f} "
                f"is below --min-agreement {gate.min_agreement:g}"
            )
