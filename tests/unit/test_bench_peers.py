"""bench/peers/table.py: the peers table of bench/run_all.py (ortserve, KServe, MLServer and the
in-process ceiling side by side, ratios ortserve / peer per row), from made-up results."""

from __future__ import annotations

from typing import Any

import pytest

from tests.unit.test_bench import _bench_module

table = _bench_module("peers/table")


def run(rps: float, p50: float, cpu: float | None = None, errors: int = 0) -> dict[str, Any]:
    return {"throughput_rps": rps, "latency_ms": {"p50": p50}, "server_cpu_cores": cpu, "errors": errors}


RESULTS = {
    table.key("mlp", 1, "ortserve"): run(600.0, 1.5, cpu=0.9),
    table.key("mlp", 1, "kserve"): run(500.0, 1.7, cpu=0.8),
    table.key("mlp", 1, "mlserver"): run(300.0, 3.0),
    table.key("mlp", 1, "ort"): run(6000.0, 0.1),
    table.key("cnn", 64, "ortserve"): run(200.0, 300.0),
    table.key("cnn", 64, "mlserver"): run(100.0, 600.0, errors=3),
}


def test_rows_have_ratios_per_peer_and_ceiling_and_skip_empty_rows() -> None:
    rows = table.rows(RESULTS, table.TARGETS)
    assert [(r["model"], r["concurrency"]) for r in rows] == [("mlp", 1), ("cnn", 64)]
    mlp, cnn = rows
    assert mlp["ratios"] == pytest.approx({"kserve": 1.2, "mlserver": 2.0, "ort": 0.1})
    assert mlp["cpu_ms"]["ortserve"] == pytest.approx(1.5)  # 0.9 cores / 600 req/s
    assert mlp["cpu_ms"]["mlserver"] is None  # no CPU sample
    # a run with errors has no figures: no ratio against it, and a missing peer gives none either
    assert cnn["ratios"] == {"kserve": None, "mlserver": None, "ort": None}


def test_markdown_has_a_column_per_target_and_ratio() -> None:
    lines = table.markdown(RESULTS, ("ortserve", "kserve"))
    assert "MLServer" not in lines[0] and "ortserve / KServe" in lines[0]
    assert lines[2] == "| mlp | 1 | 600 (1.50, 1.50) | 500 (1.70, 1.60) | 6000 | 1.20x | 0.10x |"
    assert len(lines) == 4  # header, rule, mlp C=1, cnn C=64
    assert table.markdown({}, table.TARGETS) == []
