"""ONNX Runtime sessions: build one shared InferenceSession per loaded version and run it."""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import structlog

from ortserve.errors import FailedPrecondition, logged
from ortserve.records import ModelVersionRecord, ProviderSpec, SessionSettings
from ortserve.runtime.custom_ops import NO_CUSTOM_OPS, CustomOps
from ortserve.runtime.load_cache import LoadCache, cache_key
from ortserve.runtime.providers import check_fallback, resolve_providers

try:
    import onnxruntime as ort
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise SystemExit(
        "onnxruntime is not installed: install ortserve[cpu] (onnxruntime) or ortserve[gpu] "
        "(onnxruntime-gpu), not both"
    ) from exc

log = structlog.get_logger(__name__)
_ORT_ERRORS_MODULE = "onnxruntime.capi.onnxruntime_pybind11_state"

_LEVELS = {
    "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL,
    "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
    "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
    "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
}


@dataclass(frozen=True, slots=True)
class SessionDefaults:
    """Server-wide defaults a version's own settings fall back to."""

    providers: tuple[str, ...] = ("CPUExecutionProvider",)
    strict_providers: bool = False
    # 0: the machine's cores but one (the event loop's: gRPC, parsing, batching) divided by the
    # version's concurrent batches, at least 1.
    intra_op_threads: int = 0
    custom_ops: CustomOps = NO_CUSTOM_OPS
    # ONNX Runtime-optimized models of earlier loads; None: optimize on every load.
    load_cache: LoadCache | None = None


class OrtSession:
    """A loaded InferenceSession. `run` is thread-safe and releases the GIL."""

    def __init__(self, session: ort.InferenceSession, fallback: tuple[str, ...]) -> None:
        self._session = session
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        self.provider = self.providers[0]
        self.fallback = fallback

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        run_options: ort.RunOptions | None = None,
    ) -> list[np.ndarray]:
        results: list[np.ndarray] = self._session.run(
            list(outputs) if outputs else None, dict(feeds), run_options
        )
        return results


def session_options(
    settings: SessionSettings, defaults: SessionDefaults, concurrent: int = 1
) -> ort.SessionOptions:
    auto_threads = max(1, ((os.cpu_count() or 1) - 1) // max(1, concurrent))
    opts = ort.SessionOptions()
    opts.graph_optimization_level = _LEVELS[settings.graph_optimization_level]
    opts.intra_op_num_threads = settings.intra_op_num_threads or defaults.intra_op_threads or auto_threads
    opts.inter_op_num_threads = settings.inter_op_num_threads or 1
    opts.execution_mode = (
        ort.ExecutionMode.ORT_PARALLEL
        if settings.execution_mode == "parallel"
        else ort.ExecutionMode.ORT_SEQUENTIAL
    )
    opts.enable_mem_pattern = settings.enable_mem_pattern
    opts.enable_cpu_mem_arena = settings.enable_cpu_mem_arena
    # Idle worker threads must not spin on a machine shared with the gRPC loop.
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    defaults.custom_ops.register(opts)
    return opts


def is_ort_error(exc: BaseException) -> bool:
    """Whether ONNX Runtime raised `exc` (its exception types live in the pybind state module)."""
    return type(exc).__module__ == _ORT_ERRORS_MODULE


def create_session(record: ModelVersionRecord, defaults: SessionDefaults, path: str = "") -> OrtSession:
    """Build the session for `record` from the model file at `path` (default: `record.path`) with
    its provider preference (else the server's)."""

    preferred = record.providers or tuple(ProviderSpec(name) for name in defaults.providers)
    plan = resolve_providers(preferred, ort.get_available_providers(), strict=defaults.strict_providers)
    names = [p.name for p in plan.providers]
    options = [dict(p.options) for p in plan.providers]

    def build(model_path: str, opts: ort.SessionOptions) -> ort.InferenceSession:
        return ort.InferenceSession(model_path, opts, providers=names, provider_options=options)

    opts = session_options(record.session, defaults, record.batching.max_concurrent_batches)
    try:
        if defaults.load_cache is None:
            session = build(path or record.path, opts)
        else:
            key = cache_key(record.sha256, record.session, plan.providers, defaults.custom_ops)
            session = defaults.load_cache.create(path or record.path, key, opts, build)
    except Exception as exc:  # ORT raises several unrelated types for a bad model or option
        message = f"model {record.model!r} version {record.version} failed to load in ONNX Runtime"
        raise FailedPrecondition(logged(message, exc)) from exc
    # The Python wrapper would otherwise retry failed runs on CPU by mutating the shared session.
    session.disable_fallback()
    fallback = plan.unavailable + check_fallback(
        plan, session.get_providers(), strict=defaults.strict_providers
    )
    if fallback:
        log.warning("provider_fallback", model=record.model, version=record.version, missing=list(fallback))
    return OrtSession(session, fallback)


__all__ = ["OrtSession", "SessionDefaults", "create_session", "is_ort_error"]
