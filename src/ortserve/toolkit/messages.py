"""Recipes, gates, evaluation reports and operator profiles to and from the API's messages.

One place for both sides: the SDK reads them off a ModelVersion or a ProfileModelVersionResponse
and writes them into a DeriveModelVersionRequest; the server does the reverse. Imports protobuf
stubs and the toolkit's value types only (no onnxruntime, no grpc).
"""

from __future__ import annotations

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.toolkit.profile import OperatorTime, Profile
from ortserve.toolkit.recipes import Fp16, Gate, Optimize, Quantize, Recipe
from ortserve.toolkit.report import EvaluationReport, OutputComparison

_MODE_BY_NAME = {"dynamic": mpb.QUANTIZE_MODE_DYNAMIC, "static": mpb.QUANTIZE_MODE_STATIC}


def recipe_to_pb(recipe: Recipe) -> mpb.DerivationRecipe:
    match recipe:
        case Optimize():
            return mpb.DerivationRecipe(
                optimize=mpb.OptimizeRecipe(level=recipe.level, simplify=recipe.simplify)
            )
        case Quantize():
            return mpb.DerivationRecipe(
                quantize=mpb.QuantizeRecipe(
                    mode=_MODE_BY_NAME[recipe.mode],
                    per_channel=recipe.per_channel,
                    calibration_sha256=recipe.calibration_sha256,
                    calibration_rows=recipe.calibration_rows,
                )
            )
        case Fp16():
            return mpb.DerivationRecipe(fp16=mpb.Fp16Recipe(fp16_io=recipe.fp16_io))


def recipe_from_pb(message: mpb.DerivationRecipe) -> Recipe | None:
    """The recipe, or None when no kind is set; InvalidInput for a level or mode we do not know."""
    match message.WhichOneof("kind"):
        case "optimize":
            o = message.optimize
            return Optimize(level=o.level or "extended", simplify=o.simplify)
        case "quantize":
            q = message.quantize
            return Quantize(
                mode=_mode_name(q.mode),
                per_channel=q.per_channel,
                calibration_sha256=q.calibration_sha256,
                calibration_rows=q.calibration_rows,
            )
        case "fp16":
            return Fp16(fp16_io=message.fp16.fp16_io)
        case _:
            return None


def _mode_name(mode: int) -> str:
    names: dict[int, str] = {value: name for name, value in _MODE_BY_NAME.items()}
    if mode in names:
        return names[mode]
    return "unspecified" if mode == mpb.QUANTIZE_MODE_UNSPECIFIED else f"enum value {mode}"


def gate_to_pb(gate: Gate) -> mpb.EvaluationGate:
    return mpb.EvaluationGate(max_abs_diff=gate.max_abs_diff, min_agreement=gate.min_agreement)


def gate_from_pb(message: mpb.EvaluationGate) -> Gate:
    """InvalidInput naming the figure when a bound is out of range."""
    return Gate(
        max_abs_diff=message.max_abs_diff if message.HasField("max_abs_diff") else None,
        min_agreement=message.min_agreement if message.HasField("min_agreement") else None,
    )


def report_to_pb(report: EvaluationReport) -> mpb.EvaluationReport:
    return mpb.EvaluationReport(
        outputs=[
            mpb.OutputComparison(
                name=o.name,
                max_abs_diff=o.max_abs_diff,
                mean_abs_diff=o.mean_abs_diff,
                argmax_agreement=o.argmax_agreement,
            )
            for o in report.outputs
        ],
        size_ratio=report.size_ratio,
        latency_ratio_batch1=report.latency_ratio_batch1,
        latency_ratio_batch32=report.latency_ratio_batch32,
        source_latency_ms_batch1=report.source_latency_ms_batch1,
        source_latency_ms_batch32=report.source_latency_ms_batch32,
        samples=report.samples,
        sample_rows=report.sample_rows,
        gate=gate_to_pb(report.gate) if report.gate is not None else None,
    )


def report_from_pb(message: mpb.EvaluationReport) -> EvaluationReport:
    return EvaluationReport(
        outputs=tuple(
            OutputComparison(
                name=o.name,
                max_abs_diff=o.max_abs_diff,
                mean_abs_diff=o.mean_abs_diff,
                argmax_agreement=o.argmax_agreement if o.HasField("argmax_agreement") else None,
            )
            for o in message.outputs
        ),
        size_ratio=message.size_ratio,
        latency_ratio_batch1=message.latency_ratio_batch1,
        latency_ratio_batch32=message.latency_ratio_batch32,
        source_latency_ms_batch1=message.source_latency_ms_batch1,
        source_latency_ms_batch32=message.source_latency_ms_batch32,
        samples=message.samples,
        sample_rows=message.sample_rows,
        gate=gate_from_pb(message.gate) if message.HasField("gate") else None,
    )


def profile_to_pb(profile: Profile) -> rpb.ProfileModelVersionResponse:
    return rpb.ProfileModelVersionResponse(
        operators=[
            rpb.OperatorTime(
                op_type=o.op_type, node=o.node, calls=o.calls, total_us=o.total_us, share=o.share
            )
            for o in profile.operators
        ],
        chrome_trace=profile.trace,
        mean_run_ms=profile.mean_run_ms,
        providers=profile.providers,
    )


def operator_from_pb(message: rpb.OperatorTime) -> OperatorTime:
    return OperatorTime(
        op_type=message.op_type,
        node=message.node,
        calls=message.calls,
        total_us=message.total_us,
        share=message.share,
    )
