"""ONNX Runtime sessions: build one shared InferenceSession per loaded version and run it."""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import structlog

from ortserve.errors import FailedPrecondition, logged
from ortserve.records import ModelVersionRecord, ProviderSpec, SessionSettings
from ortserve.runtime.custom_ops import NO_CUSTOM_OPS, CustomOps
from ortserve.runtime.load_cache import LoadCache, cache_key
from ortserve.runtime.providers import (
    CPU,
    DEVICE_PROVIDERS,
    ProviderPlan,
    check_fallback,
    check_specs,
    resolve_providers,
    with_cache_paths,
)

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

    providers: tuple[ProviderSpec, ...] = (ProviderSpec(CPU),)
    strict_providers: bool = False
    # 0: the machine's cores but one (the event loop's: gRPC, parsing, batching) divided by the
    # version's concurrent batches, at least 1.
    intra_op_threads: int = 0
    custom_ops: CustomOps = NO_CUSTOM_OPS
    # ONNX Runtime-optimized models of earlier loads; None: optimize on every load.
    load_cache: LoadCache | None = None
    # TensorRT engine and timing caches without a path of their own go to <dir>/<model>-<version>;
    # "": ONNX Runtime's default (the working directory).
    trt_cache_dir: str = ""


class OrtSession:
    """A loaded InferenceSession. `run` is thread-safe and releases the GIL; here it is
    InferenceSession.run as is (`open_session` picks BoundOrtSession for CUDA and TensorRT)."""

    def __init__(
        self, session: ort.InferenceSession, fallback: tuple[str, ...], requested: tuple[str, ...] = ()
    ) -> None:
        self._session = session
        self.providers: tuple[str, ...] = tuple(session.get_providers())
        self.provider = self.providers[0]
        self.fallback = fallback
        # The provider preference the session was asked for (before resolution and fallback).
        self.requested = requested or self.providers
        # Runs through IO binding (BoundOrtSession); 0 here.
        self.bound_runs = 0

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


class BoundOrtSession(OrtSession):
    """A session on a device (CUDA, TensorRT) whose runs use IO binding: inputs bound from host
    memory, outputs bound to host memory, so ONNX Runtime copies each once; counted in `bound_runs`."""

    def __init__(
        self, session: ort.InferenceSession, fallback: tuple[str, ...], requested: tuple[str, ...] = ()
    ) -> None:
        super().__init__(session, fallback, requested)
        self._outputs = [o.name for o in session.get_outputs()]
        self._count_lock = threading.Lock()

    def run(
        self,
        feeds: Mapping[str, np.ndarray],
        outputs: Sequence[str] | None = None,
        run_options: ort.RunOptions | None = None,
    ) -> list[np.ndarray]:
        binding = self._session.io_binding()
        for name, array in feeds.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(array))
        for name in outputs or self._outputs:
            binding.bind_output(name, "cpu")
        self._session.run_with_iobinding(binding, run_options)
        with self._count_lock:
            self.bound_runs += 1
        results: list[np.ndarray] = binding.copy_outputs_to_cpu()
        return results


def open_session(
    session: ort.InferenceSession, fallback: tuple[str, ...] = (), requested: tuple[str, ...] = ()
) -> OrtSession:
    """BoundOrtSession when the session runs on a device provider and has no string tensors (they
    stay in host memory), else OrtSession: decided once, nothing added to a run."""
    args = [*session.get_inputs(), *session.get_outputs()]
    device = session.get_providers()[0] in DEVICE_PROVIDERS
    bound = device and all(a.type != "tensor(string)" for a in args)
    return (BoundOrtSession if bound else OrtSession)(session, fallback, requested)


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


def check_providers(specs: Sequence[ProviderSpec], what: str) -> None:
    """INVALID_ARGUMENT for a provider this ONNX Runtime does not know or an undocumented option key."""
    check_specs(specs, ort.get_all_providers(), what)


def is_ort_error(exc: BaseException) -> bool:
    """Whether ONNX Runtime raised `exc` (its exception types live in the pybind state module)."""
    return type(exc).__module__ == _ORT_ERRORS_MODULE


def create_session(record: ModelVersionRecord, defaults: SessionDefaults, path: str = "") -> OrtSession:
    """Build the session for `record` from the model file at `path` (default: `record.path`) with
    its provider preference (else the server's)."""

    preferred = record.providers or defaults.providers
    plan = resolve_providers(preferred, ort.get_available_providers(), strict=defaults.strict_providers)
    if defaults.trt_cache_dir:
        plan = _with_trt_caches(plan, Path(defaults.trt_cache_dir) / f"{record.model}-{record.version}")
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
        message = (
            f"model {record.model!r} version {record.version} failed to load in ONNX Runtime "
            f"with providers {', '.join(names)}"
        )
        raise FailedPrecondition(logged(message, exc)) from exc
    # The Python wrapper would otherwise retry failed runs on CPU by mutating the shared session.
    session.disable_fallback()
    fallback = plan.unavailable + check_fallback(
        plan, session.get_providers(), strict=defaults.strict_providers
    )
    if fallback:
        log.warning("provider_fallback", model=record.model, version=record.version, missing=list(fallback))
    return open_session(session, fallback, tuple(p.name for p in preferred))


def _with_trt_caches(plan: ProviderPlan, directory: Path) -> ProviderPlan:
    """The plan with TensorRT's enabled caches given `directory` where they have no path (created)."""
    specs = tuple(with_cache_paths(spec, directory) for spec in plan.providers)
    if specs != plan.providers:
        directory.mkdir(parents=True, exist_ok=True)
    return ProviderPlan(specs, plan.unavailable)


__all__ = [
    "BoundOrtSession",
    "OrtSession",
    "SessionDefaults",
    "check_providers",
    "create_session",
    "is_ort_error",
    "open_session",
]
