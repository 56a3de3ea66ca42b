"""Execution providers are data: an ordered preference resolved against what ONNX Runtime offers."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from ortserve.errors import FailedPrecondition
from ortserve.records import ProviderSpec

CPU = "CPUExecutionProvider"


@dataclass(frozen=True, slots=True)
class ProviderPlan:
    """What to ask ONNX Runtime for, and what was asked for but is not available here."""

    providers: tuple[ProviderSpec, ...]
    unavailable: tuple[str, ...]


def resolve_providers(
    preferred: Sequence[ProviderSpec], available: Sequence[str], *, strict: bool
) -> ProviderPlan:
    """Keep the preferred providers ONNX Runtime has, in order, always ending with CPU.

    With `strict`, a preferred provider that is not available is an error naming it.
    """
    chosen = [p for p in preferred if p.name in available]
    missing = tuple(p.name for p in preferred if p.name not in available)
    if strict and missing:
        raise FailedPrecondition(
            f"execution provider(s) {', '.join(missing)} not available; available: {', '.join(available)}"
        )
    if not any(p.name == CPU for p in chosen):
        chosen.append(ProviderSpec(CPU))
    return ProviderPlan(tuple(chosen), missing)


def check_fallback(plan: ProviderPlan, active: Sequence[str], *, strict: bool) -> tuple[str, ...]:
    """Providers that were requested and offered but did not make it into the session.

    onnxruntime-gpu silently falls back to CPU when CUDA cannot start; `strict` turns that
    into an error instead of a recorded fallback.
    """
    lost = tuple(p.name for p in plan.providers if p.name not in active)
    if strict and lost:
        raise FailedPrecondition(
            f"execution provider(s) {', '.join(lost)} failed to start; "
            f"the session runs on {', '.join(active)}"
        )
    return lost
