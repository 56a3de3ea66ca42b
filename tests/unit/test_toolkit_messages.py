"""Recipes, gates and reports through the API's messages and back, unchanged."""

from __future__ import annotations

import re

import pytest

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.errors import InvalidInput
from ortserve.toolkit.messages import (
    gate_from_pb,
    operator_from_pb,
    profile_to_pb,
    recipe_from_pb,
    recipe_to_pb,
    report_from_pb,
    report_to_pb,
)
from ortserve.toolkit.profile import OperatorTime, Profile
from ortserve.toolkit.recipes import Fp16, Gate, Optimize, Quantize, Recipe
from ortserve.toolkit.report import EvaluationReport, OutputComparison

RECIPES: list[Recipe] = [
    Optimize(level="basic", simplify=True),
    Optimize(),
    Quantize(mode="dynamic", per_channel=True),
    Quantize(mode="static", calibration_sha256="ab" * 32, calibration_rows=16),
    Fp16(fp16_io=True),
]


@pytest.mark.parametrize("recipe", RECIPES)
def test_recipes_survive_the_wire(recipe: Recipe) -> None:
    message = mpb.DerivationRecipe.FromString(recipe_to_pb(recipe).SerializeToString())
    assert recipe_from_pb(message) == recipe


def test_absent_and_unknown_recipes() -> None:
    assert recipe_from_pb(mpb.DerivationRecipe()) is None
    assert recipe_from_pb(mpb.DerivationRecipe(optimize=mpb.OptimizeRecipe())) == Optimize(level="extended")
    with pytest.raises(InvalidInput, match="quantize mode must be one of dynamic, static, got 'unspecified'"):
        recipe_from_pb(mpb.DerivationRecipe(quantize=mpb.QuantizeRecipe()))
    with pytest.raises(InvalidInput, match="optimize level must be one of basic, extended, got 'all'"):
        recipe_from_pb(mpb.DerivationRecipe(optimize=mpb.OptimizeRecipe(level="all")))


def test_reports_and_gates_survive_the_wire() -> None:
    report = EvaluationReport(
        outputs=(
            OutputComparison(name="y", max_abs_diff=0.25, mean_abs_diff=0.01, argmax_agreement=0.875),
            OutputComparison(name="z", max_abs_diff=float("inf"), mean_abs_diff=float("inf")),
        ),
        size_ratio=0.26,
        latency_ratio_batch1=0.9,
        latency_ratio_batch32=0.5,
        source_latency_ms_batch1=0.04,
        source_latency_ms_batch32=1.5,
        samples="given",
        sample_rows=8,
        gate=Gate(min_agreement=0.8),
    )
    message = mpb.EvaluationReport.FromString(report_to_pb(report).SerializeToString())
    assert report_from_pb(message) == report
    assert report_from_pb(report_to_pb(report.with_gate(None))).gate is None
    assert gate_from_pb(mpb.EvaluationGate(max_abs_diff=0.0)) == Gate(max_abs_diff=0.0)
    with pytest.raises(InvalidInput, match=re.escape("gate min_agreement must be in 0..1, got 1.5")):
        gate_from_pb(mpb.EvaluationGate(min_agreement=1.5))


def test_profiles_survive_the_wire() -> None:
    operators = (
        OperatorTime(op_type="MatMul", node="mm", calls=10, total_us=120.5, share=0.75),
        OperatorTime(op_type="Add", node="add", calls=10, total_us=40.0, share=0.25),
    )
    profile = Profile(operators=operators, trace=b"[]", mean_run_ms=0.02, providers=("CPUExecutionProvider",))
    message = rpb.ProfileModelVersionResponse.FromString(profile_to_pb(profile).SerializeToString())
    assert tuple(operator_from_pb(o) for o in message.operators) == operators
    assert (message.chrome_trace, message.mean_run_ms, list(message.providers)) == (
        b"[]",
        0.02,
        ["CPUExecutionProvider"],
    )
