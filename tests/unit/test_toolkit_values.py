"""Recipes, gates, evaluation reports and sample inputs: pure values and numpy."""

from __future__ import annotations

import numpy as np
import pytest

from ortserve import dtypes
from ortserve.errors import FailedPrecondition, InvalidInput
from ortserve.signature import Signature, TensorSpec
from ortserve.toolkit import samples
from ortserve.toolkit.recipes import (
    Fp16,
    Gate,
    Optimize,
    Quantize,
    describe,
    recipe_from_json,
    recipe_to_json,
)
from ortserve.toolkit.report import EvaluationReport, check_gate, compare_outputs

SIG = Signature(
    (TensorSpec("x", dtypes.BY_NAME["FP32"], (-1, 4)), TensorSpec("words", dtypes.BY_NAME["BYTES"], (-1,))),
    (TensorSpec("y", dtypes.BY_NAME["FP32"], (-1, 3)),),
    True,
)


@pytest.mark.parametrize(
    ("recipe", "text"),
    [
        (Optimize(level="basic", simplify=True), "optimize basic + simplify"),
        (
            Quantize(mode="static", per_channel=True, calibration_sha256="ab", calibration_rows=8),
            "quantize static per-channel",
        ),
        (Fp16(fp16_io=True), "fp16 (fp16 inputs and outputs)"),
    ],
)
def test_recipes_round_trip(recipe: Optimize | Quantize | Fp16, text: str) -> None:
    assert recipe_from_json(recipe_to_json(recipe)) == recipe
    assert describe(recipe) == text


def test_bad_recipes_name_the_field() -> None:
    with pytest.raises(InvalidInput, match="optimize level must be one of basic, extended, got 'all'"):
        Optimize(level="all")
    with pytest.raises(InvalidInput, match="quantize mode must be one of dynamic, static, got 'int4'"):
        Quantize(mode="int4")
    with pytest.raises(InvalidInput, match="recipe kind must be optimize, quantize or fp16, got 'prune'"):
        recipe_from_json({"kind": "prune"})
    with pytest.raises(InvalidInput, match=r"gate min_agreement must be in 0\.\.1, got 1\.5"):
        Gate(min_agreement=1.5)
    with pytest.raises(InvalidInput, match="gate max_abs_diff must be a finite number >= 0, got nan"):
        Gate(max_abs_diff=float("nan"))


def test_comparison_figures() -> None:
    source = np.array([[0.1, 0.7, 0.2], [0.6, 0.3, 0.1], [0.2, 0.2, 0.6], [0.3, 0.4, 0.3]])
    derived = source.copy()
    derived[1] = [0.3, 0.6, 0.1]  # argmax moves from 0 to 1 in one row of four
    (out,) = compare_outputs({"y": source}, {"y": derived})
    assert out.max_abs_diff == pytest.approx(0.3)
    assert out.mean_abs_diff == pytest.approx(0.6 / 12)
    assert out.argmax_agreement == pytest.approx(0.75)
    (flat,) = compare_outputs({"z": np.zeros(5)}, {"z": np.ones(5)})
    assert flat.argmax_agreement is None and flat.max_abs_diff == 1.0
    (nan,) = compare_outputs({"z": np.zeros(2)}, {"z": np.array([0.0, np.nan])})
    assert nan.max_abs_diff == float("inf")


def test_gate_names_the_figure_and_value() -> None:
    report = EvaluationReport(
        outputs=compare_outputs({"y": np.eye(4)}, {"y": np.eye(4)[::-1] + 0.001}), size_ratio=0.3
    )
    assert EvaluationReport.from_json(report.to_json()) == report
    check_gate(report, Gate(max_abs_diff=2.0))
    with pytest.raises(
        FailedPrecondition, match=r"output 'y' max abs diff 1.001 exceeds --max-abs-diff 0.01"
    ):
        check_gate(report, Gate(max_abs_diff=0.01))
    with pytest.raises(
        FailedPrecondition, match=r"output 'y' argmax agreement 0.0000 is below --min-agreement 0.9"
    ):
        check_gate(report, Gate(min_agreement=0.9))
    gated = report.with_gate(Gate(min_agreement=0.0))
    assert EvaluationReport.from_json(gated.to_json()).gate == Gate(min_agreement=0.0)


def test_samples_generate_check_and_store() -> None:
    generated = samples.generate_samples(SIG, 5)
    assert samples.check_samples(SIG, generated, "sample inputs") == 5
    back = samples.from_npz(samples.to_npz(generated), "samples")
    assert np.array_equal(back["x"], generated["x"])
    assert back["words"].dtype == np.dtype(object) and list(back["words"]) == list(generated["words"])
    assert samples.take_rows(back, 12)["x"].shape == (12, 4)


def test_bad_samples_name_the_input() -> None:
    good = samples.generate_samples(SIG, 2)
    with pytest.raises(InvalidInput, match=r"^calibration inputs: input 'x': shape \[2, 2\] does not match"):
        samples.check_samples(SIG, {**good, "x": good["x"][:, :2]}, "calibration inputs")
    with pytest.raises(InvalidInput, match=r"^sample inputs: the model is missing input\(s\) words$"):
        samples.check_samples(SIG, {"x": good["x"]}, "sample inputs")
    with pytest.raises(InvalidInput, match=r"^sample inputs: the model has no input 'z'; expected inputs: x"):
        samples.check_samples(SIG, {**good, "z": good["x"]}, "sample inputs")
    with pytest.raises(InvalidInput, match=r"calibration\.npz is not a readable \.npz file"):
        samples.from_npz(b"not a zip", "calibration.npz")
