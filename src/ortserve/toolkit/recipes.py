"""Recipes for derived versions (optimize, quantize, fp16) and the gate a derived version must pass."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ortserve.errors import InvalidInput

OPTIMIZE_LEVELS = ("basic", "extended")
QUANTIZE_MODES = ("dynamic", "static")


@dataclass(frozen=True, slots=True, kw_only=True)
class Optimize:
    """ONNX Runtime graph optimizations applied offline (`optimized_model_filepath`), then onnxslim."""

    level: str = "extended"
    simplify: bool = False

    def __post_init__(self) -> None:
        if self.level not in OPTIMIZE_LEVELS:
            raise InvalidInput(
                f"optimize level must be one of {', '.join(OPTIMIZE_LEVELS)}, got {self.level!r} "
                "('all' adds hardware-specific layouts and is applied when a version loads)"
            )


@dataclass(frozen=True, slots=True, kw_only=True)
class Quantize:
    """int8 quantization; static mode calibrates activations on inputs whose digest is recorded here."""

    mode: str
    per_channel: bool = False
    calibration_sha256: str = ""
    calibration_rows: int = 0

    def __post_init__(self) -> None:
        if self.mode not in QUANTIZE_MODES:
            raise InvalidInput(f"quantize mode must be one of {', '.join(QUANTIZE_MODES)}, got {self.mode!r}")


@dataclass(frozen=True, slots=True, kw_only=True)
class Fp16:
    """float32 weights and compute to float16; `fp16_io` converts the inputs and outputs too."""

    fp16_io: bool = False


Recipe = Optimize | Quantize | Fp16


def recipe_to_json(recipe: Recipe) -> dict[str, Any]:
    match recipe:
        case Optimize():
            return {"kind": "optimize", "level": recipe.level, "simplify": recipe.simplify}
        case Quantize():
            return {
                "kind": "quantize",
                "mode": recipe.mode,
                "per_channel": recipe.per_channel,
                "calibration_sha256": recipe.calibration_sha256,
                "calibration_rows": recipe.calibration_rows,
            }
        case Fp16():
            return {"kind": "fp16", "fp16_io": recipe.fp16_io}


def recipe_from_json(data: Mapping[str, Any]) -> Recipe:
    fields = {k: v for k, v in data.items() if k != "kind"}
    match data.get("kind"):
        case "optimize":
            return Optimize(**fields)
        case "quantize":
            return Quantize(**fields)
        case "fp16":
            return Fp16(**fields)
        case other:
            raise InvalidInput(f"recipe kind must be optimize, quantize or fp16, got {other!r}")


def describe(recipe: Recipe) -> str:
    """One line for tables and logs, e.g. "quantize dynamic per-channel"."""
    match recipe:
        case Optimize():
            return f"optimize {recipe.level}" + (" + simplify" if recipe.simplify else "")
        case Quantize():
            return f"quantize {recipe.mode}" + (" per-channel" if recipe.per_channel else "")
        case Fp16():
            return "fp16" + (" (fp16 inputs and outputs)" if recipe.fp16_io else "")


@dataclass(frozen=True, slots=True, kw_only=True)
class Gate:
    """Figures a derived version must meet against its source; None: not checked."""

    max_abs_diff: float | None = None
    min_agreement: float | None = None

    def __post_init__(self) -> None:
        bound = self.max_abs_diff
        if bound is not None and not (math.isfinite(bound) and bound >= 0):
            raise InvalidInput(f"gate max_abs_diff must be a finite number >= 0, got {self.max_abs_diff}")
        if self.min_agreement is not None and not 0.0 <= self.min_agreement <= 1.0:
            raise InvalidInput(f"gate min_agreement must be in 0..1, got {self.min_agreement}")

    @property
    def is_set(self) -> bool:
        return self.max_abs_diff is not None or self.min_agreement is not None

    def to_json(self) -> dict[str, Any]:
        return {"max_abs_diff": self.max_abs_diff, "min_agreement": self.min_agreement}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Gate:
        return cls(max_abs_diff=data.get("max_abs_diff"), min_agreement=data.get("min_agreement"))
