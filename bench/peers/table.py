"""The peers table of bench/run_all.py: ortserve, KServe, MLServer and the ceiling side by side.

Pure functions over the run results (no imports beyond the standard library), so that a unit test
can check them. Scenario keys are `peers-<model>-c<C>-<target>`, target one of TARGETS or `ort`
(the in-process ONNX Runtime ceiling with C callers, one intra-op thread each).
"""

from __future__ import annotations

from typing import Any

MODELS = ("tiny", "mlp", "cnn")
CONCURRENCY = (1, 16, 64)
PEERS = ("kserve", "mlserver")
TARGETS = ("ortserve", *PEERS)
NAMES = {"ortserve": "ortserve", "kserve": "KServe", "mlserver": "MLServer", "ort": "in-process ORT"}


def key(model: str, concurrency: int, target: str) -> str:
    return f"peers-{model}-c{concurrency}-{target}"


def ratio(num: float | None, den: float | None) -> float | None:
    if num is None or den is None or den <= 0:
        return None
    return num / den


def _rps(results: dict[str, dict[str, Any]], k: str) -> float | None:
    r = results.get(k)
    return None if not r or r.get("errors") else float(r["throughput_rps"])


def _p50(results: dict[str, dict[str, Any]], k: str) -> float | None:
    r = results.get(k)
    return None if not r or r.get("errors") else float(r["latency_ms"]["p50"])


def _cpu_ms(results: dict[str, dict[str, Any]], k: str) -> float | None:
    """Server CPU milliseconds per request over the measured window."""
    r = results.get(k)
    if not r or r.get("errors") or not r.get("server_cpu_cores"):
        return None
    return ratio(float(r["server_cpu_cores"]) * 1e3, float(r["throughput_rps"]))


def rows(results: dict[str, dict[str, Any]], targets: tuple[str, ...]) -> list[dict[str, Any]]:
    """One row per (model, C) that has any result: req/s, p50 and CPU per request per target, ratios."""
    out: list[dict[str, Any]] = []
    for model in MODELS:
        for c in CONCURRENCY:
            cells = {t: (_rps(results, key(model, c, t)), _p50(results, key(model, c, t))) for t in targets}
            cells["ort"] = (_rps(results, key(model, c, "ort")), None)
            if all(v[0] is None for v in cells.values()):
                continue
            mine = cells.get("ortserve", (None, None))[0]
            row: dict[str, Any] = {"model": model, "concurrency": c, "cells": cells}
            row["cpu_ms"] = {t: _cpu_ms(results, key(model, c, t)) for t in targets}
            row["ratios"] = {p: ratio(mine, cells[p][0]) for p in PEERS if p in targets}
            row["ratios"]["ort"] = ratio(mine, cells["ort"][0])
            out.append(row)
    return out


def _f(value: float | None, fmt: str) -> str:
    return "-" if value is None else fmt.format(value)


def markdown(results: dict[str, dict[str, Any]], targets: tuple[str, ...]) -> list[str]:
    """Markdown lines of the table; empty when no peer scenario ran."""
    table = rows(results, targets)
    if not table:
        return []
    peers = [p for p in PEERS if p in targets]
    head = ["model", "C"]
    head += [f"{NAMES[t]} req/s (p50 ms, CPU ms/req)" for t in targets]
    head += ["in-process ORT req/s"]
    head += [f"ortserve / {NAMES[p]}" for p in peers] + ["ortserve / ORT"]
    lines = ["| " + " | ".join(head) + " |", "|---|" + "---:|" * (len(head) - 1)]
    for row in table:
        cells = [row["model"], str(row["concurrency"])]
        for t in targets:
            rps, p50 = row["cells"][t]
            cpu = row["cpu_ms"][t]
            cells.append("-" if rps is None else f"{rps:.0f} ({_f(p50, '{:.2f}')}, {_f(cpu, '{:.2f}')})")
        cells.append(_f(row["cells"]["ort"][0], "{:.0f}"))
        cells += [_f(row["ratios"][p], "{:.2f}x") for p in peers]
        cells.append(_f(row["ratios"]["ort"], "{:.2f}x"))
        lines.append("| " + " | ".join(cells) + " |")
    return lines
