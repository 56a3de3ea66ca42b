"""Operator profiles: ONNX Runtime's own profiler run on a version in the limited subprocess.

The child builds a session with `enable_profiling`, runs the inputs once to warm up and then `runs`
times, and reads ONNX Runtime's trace: a JSON array of Chrome trace events (the format Perfetto and
chrome://tracing open). Each node's kernel time is one "Node" event named "<node>_kernel_time"
with the operator in args.op_name; each run is one "model_run" event. The warm-up run and the
node events inside it are left out of the figures but kept in the trace.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ortserve.errors import InvalidInput, ResourceExhausted
from ortserve.signature import Signature
from ortserve.toolkit import samples as sample_inputs
from ortserve.toolkit.sandbox import Detailed, SandboxLimits, run_job

MAX_TRACE_BYTES = 64 << 20
MAX_RUNS = 1000
_KERNEL = "_kernel_time"


@dataclass(frozen=True, slots=True)
class OperatorTime:
    """One node's kernel time over the profiled runs; `share` of all nodes' time (0 to 1)."""

    op_type: str
    node: str
    calls: int
    total_us: float
    share: float


@dataclass(frozen=True, slots=True)
class Profile:
    """Operators by total time, most first; `trace` is ONNX Runtime's JSON trace file."""

    operators: tuple[OperatorTime, ...]
    trace: bytes
    mean_run_ms: float
    providers: tuple[str, ...]


def profile_model(
    path: Path,
    *,
    signature: Signature,
    samples: Mapping[str, np.ndarray] | None,
    batch: int,
    runs: int,
    work_dir: Path,
    limits: SandboxLimits,
    custom_op_libraries: tuple[str, ...] = (),
    providers: tuple[str, ...] = ("CPUExecutionProvider",),
) -> Profile:
    """Profile the model at `path` on `batch` rows of the samples (generated when None), `runs` times.

    Writes the inputs and the trace under `work_dir` (the caller deletes it). InvalidInput for a bad
    batch, run count or samples, or a model ONNX Runtime cannot run; ResourceExhausted for a trace
    over MAX_TRACE_BYTES.
    """
    _check_counts(signature, batch, runs)
    inputs_path = work_dir / "profile-inputs.npz"
    inputs_path.write_bytes(sample_inputs.to_npz(_inputs(signature, samples, batch)))
    request = {
        "model": str(path),
        "inputs": str(inputs_path),
        "runs": runs,
        "prefix": str(work_dir / "profile"),
        "libraries": list(custom_op_libraries),
        "providers": list(providers),
        "max_trace_bytes": MAX_TRACE_BYTES,
    }
    result = run_job(f"{__name__}:profile_job", request, limits, "operator profile")
    operators = tuple(OperatorTime(**o) for o in result["operators"])
    trace = Path(result["trace"]).read_bytes()
    return Profile(operators, trace, float(result["mean_run_ms"]), tuple(result["providers"]))


def _check_counts(signature: Signature, batch: int, runs: int) -> None:
    if not 1 <= runs <= MAX_RUNS:
        raise InvalidInput(f"profile runs is {runs}; expected 1 to {MAX_RUNS}")
    if not 1 <= batch <= sample_inputs.MAX_SAMPLE_ROWS:
        raise InvalidInput(f"profile batch is {batch}; expected 1 to {sample_inputs.MAX_SAMPLE_ROWS}")
    if batch != 1 and not signature.batch_axis:
        raise InvalidInput(f"profile batch is {batch}; the model has no batch axis, so it must be 1")


def _inputs(
    signature: Signature, samples: Mapping[str, np.ndarray] | None, batch: int
) -> dict[str, np.ndarray]:
    if not samples:
        return sample_inputs.generate_samples(signature, batch)
    sample_inputs.check_samples(signature, samples, "sample inputs")
    return sample_inputs.take_rows(samples, batch) if signature.batch_axis else dict(samples)


def profile_job(request: dict[str, Any]) -> dict[str, Any]:
    """In the child: run the profiled session and summarise its trace."""
    feeds = sample_inputs.from_npz(Path(request["inputs"]), "profile inputs")
    session = _session(request)
    try:
        for _ in range(1 + int(request["runs"])):
            session.run(None, feeds)
    except Exception as exc:  # ORT raises several unrelated types for a run that fails
        raise Detailed("ONNX Runtime failed to run the model on the profile inputs", exc) from None
    trace = Path(session.end_profiling())
    size, limit = trace.stat().st_size, int(request["max_trace_bytes"])
    if size > limit:
        raise ResourceExhausted(
            f"the profile trace is {size} bytes, over the limit of {limit} bytes; "
            f"ask for fewer runs than {request['runs']}"
        )
    events: list[dict[str, Any]] = json.loads(trace.read_bytes())
    operators, mean_run_ms = summarize(events)
    return {
        "operators": [asdict(o) for o in operators],
        "mean_run_ms": mean_run_ms,
        "trace": str(trace),
        "providers": session.get_providers(),
    }


def _session(request: Mapping[str, Any]) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = request["prefix"]
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    for library in request["libraries"]:
        try:
            options.register_custom_ops_library(library)
        except Exception as exc:  # ORT raises its own types for a library that does not load
            raise Detailed(f"custom operator library {library!r} does not load", exc) from None
    try:
        return ort.InferenceSession(request["model"], options, providers=request["providers"])
    except Exception as exc:  # ORT raises several unrelated types for a bad model or provider
        raise Detailed("ONNX Runtime failed to load the model for profiling", exc) from None


def summarize(events: Sequence[Mapping[str, Any]]) -> tuple[tuple[OperatorTime, ...], float]:
    """Operators by total time (most first) and the mean run in ms, the first (warm-up) run left out."""
    run_events = sorted((e for e in events if e.get("name") == "model_run"), key=lambda e: e["ts"])
    if len(run_events) < 2:
        raise InvalidInput("the profile trace has no run after the warm-up run")
    warmup = run_events[0]
    nodes = [e for e in _node_events(events) if not _inside(e, warmup)]
    totals: dict[str, tuple[str, int, float]] = {}
    for event in nodes:
        name = str(event["name"]).removesuffix(_KERNEL)
        op_type, calls, total = totals.get(name, (str(event["args"]["op_name"]), 0, 0.0))
        totals[name] = (op_type, calls + 1, total + float(event["dur"]))
    whole = sum(total for _, _, total in totals.values()) or 1.0
    operators = sorted(
        (OperatorTime(op, node, calls, total, total / whole) for node, (op, calls, total) in totals.items()),
        key=lambda o: (-o.total_us, o.node),
    )
    mean_run_ms = sum(float(e["dur"]) for e in run_events[1:]) / (len(run_events) - 1) / 1000
    return tuple(operators), mean_run_ms


def _node_events(events: Iterable[Mapping[str, Any]]) -> Iterable[Mapping[str, Any]]:
    return (e for e in events if e.get("cat") == "Node" and str(e.get("name", "")).endswith(_KERNEL))


def _inside(event: Mapping[str, Any], run: Mapping[str, Any]) -> bool:
    return bool(run["ts"] <= event["ts"] <= run["ts"] + run["dur"])


__all__ = ["MAX_TRACE_BYTES", "OperatorTime", "Profile", "profile_model", "summarize"]
