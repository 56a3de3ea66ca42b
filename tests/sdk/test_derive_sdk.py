"""Derived versions and operator profiles through `Client` and `AsyncClient` against a real server."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve.client import AsyncClient, Client, EvaluationReport, Gate, Optimize, Quantize
from ortserve.server.app import OrtServer

SAMPLES = {"x": np.random.default_rng(7).standard_normal((8, 16)).astype(np.float32)}


@pytest.fixture
async def clf(server: OrtServer, address: str, model_files: dict[str, Path]) -> str:
    """Model `clf` (linear: x [N,16] -> y [N,4]) registered through the SDK with 8 sample rows."""
    async with AsyncClient(address, retry=None) as client:
        info = await client.register(model_files["linear"], "clf", samples=SAMPLES)
    assert (info.version, info.state, info.sample_rows) == (1, "ready", 8)
    assert (info.derived_from, info.recipe, info.report) == (None, None, None)
    return address


def _check_report(report: EvaluationReport | None, gate: Gate | None) -> None:
    assert report is not None
    assert (report.samples, report.sample_rows, report.gate) == ("given", 8, gate)
    (y,) = report.outputs
    assert y.name == "y" and 0.0 <= y.mean_abs_diff <= y.max_abs_diff
    assert y.argmax_agreement is not None and 0.0 <= y.argmax_agreement <= 1.0
    assert report.size_ratio > 0


async def test_quantize_carries_recipe_and_report_and_a_missed_gate_registers_nothing(clf: str) -> None:
    async with AsyncClient(clf, retry=None) as client:
        derived = await client.quantize("clf", 1, description="int8")
        assert (derived.model, derived.version, derived.derived_from) == ("clf", 2, 1)
        assert derived.recipe == Quantize(mode="dynamic") and derived.description == "int8"
        _check_report(derived.report, None)
        assert derived.report is not None and derived.report.outputs[0].max_abs_diff > 0
        again = await client.get_version("clf", 2)
        assert (again.recipe, again.report, again.derived_from) == (derived.recipe, derived.report, 1)

        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.derive("clf", 1, Quantize(mode="dynamic"), gate=Gate(max_abs_diff=0.0))
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION, info.value.details()
        assert "output 'y' max abs diff" in (info.value.details() or "")
        assert "exceeds --max-abs-diff 0" in (info.value.details() or "")
        assert [v.version for v in await client.list_versions("clf")] == [1, 2]

        gate = Gate(max_abs_diff=1e-3, min_agreement=1.0)
        optimized = await client.optimize("clf", 1, level="basic", gate=gate, load=True)
        assert (optimized.version, optimized.state, optimized.recipe) == (3, "ready", Optimize(level="basic"))
        _check_report(optimized.report, gate)


def _sync_calls(address: str) -> None:
    with Client(address, retry=None) as client:
        derived = client.fp16("clf", 1, gate=Gate(min_agreement=0.5))
        assert derived.derived_from == 1 and derived.report is not None
        assert derived.report.gate == Gate(min_agreement=0.5)
        profile = client.profile("clf", 1, batch_size=4, runs=3)
        assert profile.operators and profile.providers == ("CPUExecutionProvider",)
        assert all(o.op_type and o.node for o in profile.operators)
        assert sum(o.share for o in profile.operators) == pytest.approx(1.0, abs=1e-6)
        assert all(o.calls == 3 and o.total_us > 0 for o in profile.operators)
        assert profile.mean_run_ms > 0 and isinstance(json.loads(profile.chrome_trace), list)
        with pytest.raises(grpc.RpcError) as info:
            client.profile("clf", 9)
        assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def test_sync_client_derives_and_profiles(clf: str) -> None:
    await asyncio.to_thread(_sync_calls, clf)
