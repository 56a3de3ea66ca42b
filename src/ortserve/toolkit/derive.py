"""Derived versions: a recipe applied to a source model and the result evaluated against it.

The parent checks what it can without the model (recipe needs, calibration and sample arrays
against the signature), writes the arrays as .npz files under the work directory, and runs
`derive_job` in the sandbox's limited child, which applies the recipe (`transforms`) and compares
the derived model with its source (`evaluate`). Nothing of the model runs in the calling process.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve.errors import FailedPrecondition, InvalidInput
from ortserve.signature import Signature
from ortserve.toolkit.recipes import Optimize, Quantize, Recipe, describe, recipe_from_json, recipe_to_json
from ortserve.toolkit.report import EvaluationReport
from ortserve.toolkit.samples import check_samples, from_npz, generate_samples, to_npz
from ortserve.toolkit.sandbox import SandboxLimits, run_job

# Rows generated from the signature when the source version has no samples.
GENERATED_ROWS = 32


@dataclass(frozen=True, slots=True)
class Derived:
    path: Path
    report: EvaluationReport  # gate None: the caller applies the gate


def derive_model(
    source: Path,
    recipe: Recipe,
    *,
    signature: Signature,
    samples: Mapping[str, np.ndarray] | None,
    calibration: Mapping[str, np.ndarray] | None,
    work_dir: Path,
    limits: SandboxLimits,
    custom_op_libraries: tuple[str, ...] = (),
) -> Derived:
    """Apply `recipe` to the model at `source` in a limited subprocess and evaluate the result.

    `samples`: the source version's sample inputs (None: GENERATED_ROWS rows generated from the
    signature); `calibration`: arrays for static quantization (else the samples). The derived file
    is written under `work_dir`. InvalidInput / FailedPrecondition name the recipe and the cause.
    """
    _check_tools(recipe)
    calibration = _calibration(recipe, signature, samples, calibration)
    kind = "given" if samples is not None else "generated"
    if samples is None:
        samples = generate_samples(signature, GENERATED_ROWS)
    check_samples(signature, samples, "sample inputs")
    request: dict[str, Any] = {
        "source": str(source),
        "target": str(work_dir / "derived.onnx"),
        "recipe": recipe_to_json(recipe),
        "samples": _write(work_dir / "samples.npz", samples),
        "samples_kind": kind,
        "calibration": _write(work_dir / "calibration.npz", calibration) if calibration else None,
        "batch_axis": signature.batch_axis,
        "custom_op_libraries": list(custom_op_libraries),
    }
    result = run_job(f"{__name__}:derive_job", request, limits, f"derivation ({describe(recipe)})")
    return Derived(Path(request["target"]), EvaluationReport.from_json(result["report"]))


def _check_tools(recipe: Recipe) -> None:
    if isinstance(recipe, Optimize) and recipe.simplify and importlib.util.find_spec("onnxslim") is None:
        raise FailedPrecondition("optimize --simplify needs onnxslim: install ortserve[toolkit]")


def _calibration(
    recipe: Recipe,
    signature: Signature,
    samples: Mapping[str, np.ndarray] | None,
    calibration: Mapping[str, np.ndarray] | None,
) -> Mapping[str, np.ndarray] | None:
    """The arrays static quantization calibrates on (checked against the signature); None otherwise."""
    static = isinstance(recipe, Quantize) and recipe.mode == "static"
    if calibration is not None and not static:
        raise InvalidInput(
            f"calibration inputs are used by static quantization only, not by {describe(recipe)}"
        )
    if not static:
        return None
    if calibration is not None:
        check_samples(signature, calibration, "calibration inputs")
        return calibration
    if samples is None:
        raise InvalidInput(
            "static quantization needs calibration inputs (--calibration FILE.npz) or sample inputs "
            "stored with the source version"
        )
    return samples


def _write(path: Path, arrays: Mapping[str, np.ndarray]) -> str:
    path.write_bytes(to_npz(arrays))
    return str(path)


def derive_job(request: dict[str, Any]) -> dict[str, Any]:
    """The child's side of `derive_model` (run by the sandbox)."""
    from ortserve.toolkit import evaluate, transforms

    recipe = recipe_from_json(request["recipe"])
    source, target = Path(request["source"]), Path(request["target"])
    libraries: Sequence[str] = request["custom_op_libraries"]
    calibration = (
        from_npz(Path(request["calibration"]), "calibration inputs") if request["calibration"] else None
    )
    transforms.apply(
        recipe,
        source,
        target,
        calibration=calibration,
        batch_axis=request["batch_axis"],
        custom_op_libraries=libraries,
    )
    report = evaluate.evaluate(
        recipe,
        source,
        target,
        from_npz(Path(request["samples"]), "sample inputs"),
        batch_axis=request["batch_axis"],
        samples_kind=request["samples_kind"],
        custom_op_libraries=libraries,
    )
    return {"report": report.to_json()}
