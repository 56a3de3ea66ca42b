"""A derived model compared with its source on sample inputs; run inside the sandbox's child only.

Accuracy: both run on all sample rows at once, each output compared (`report.compare_outputs`).
Latency: CPU sessions at the default (all) optimization level, one intra-op and one inter-op thread
(a per-core figure, steady on a shared machine), at batch 1 and, with a batch axis, batch 32 (sample
rows repeated). After WARMUP runs each, source and derived alternate run by run, so drift of the
machine hits both alike, until MAX_PAIRS pairs or BUDGET_S seconds (at least MIN_PAIRS pairs); the
latency of each is the median of its runs. A derived model with fp16 inputs gets the samples cast.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from ortserve.toolkit.recipes import Recipe
from ortserve.toolkit.report import EvaluationReport, compare_outputs
from ortserve.toolkit.samples import take_rows
from ortserve.toolkit.transforms import session_options, step

WARMUP = 3
MIN_PAIRS = 3
MAX_PAIRS = 20
BUDGET_S = 0.25
BATCHES = (1, 32)

Feeds = dict[str, np.ndarray]


@dataclass(frozen=True, slots=True)
class Latency:
    source_ms: float
    derived_ms: float

    @property
    def ratio(self) -> float:
        return self.derived_ms / self.source_ms if self.source_ms > 0 else 0.0


def evaluate(
    recipe: Recipe,
    source: Path,
    derived: Path,
    samples: Mapping[str, np.ndarray],
    *,
    batch_axis: bool,
    samples_kind: str,
    custom_op_libraries: Sequence[str],
) -> EvaluationReport:
    """The report of `derived` against `source` (gate None: the registry applies the gate)."""
    source_session = _session(source, custom_op_libraries)
    derived_session = step(
        recipe, "ONNX Runtime cannot load the derived model", lambda: _session(derived, custom_op_libraries)
    )
    want = step(
        recipe,
        f"the source model fails to run on the {samples_kind} sample inputs",
        lambda: _outputs(source_session, samples),
    )
    got = step(
        recipe,
        f"the derived model fails to run on the {samples_kind} sample inputs",
        lambda: _outputs(derived_session, _cast_for(derived_session, samples)),
    )
    rows = next(iter(samples.values())).shape[0] if batch_axis else 1
    latencies = [
        _latency(source_session, derived_session, _at_batch(samples, batch, batch_axis))
        for batch in (BATCHES if batch_axis else BATCHES[:1])
    ]
    batch32 = latencies[1] if len(latencies) > 1 else Latency(0.0, 0.0)
    return EvaluationReport(
        outputs=compare_outputs(want, got),
        size_ratio=derived.stat().st_size / source.stat().st_size,
        latency_ratio_batch1=latencies[0].ratio,
        latency_ratio_batch32=batch32.ratio,
        source_latency_ms_batch1=latencies[0].source_ms,
        source_latency_ms_batch32=batch32.source_ms,
        samples=samples_kind,
        sample_rows=rows,
    )


def _session(path: Path, custom_op_libraries: Sequence[str]) -> Any:
    options = session_options(custom_op_libraries)
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _outputs(session: Any, feeds: Mapping[str, np.ndarray]) -> Feeds:
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, dict(feeds)), strict=True))


def _cast_for(session: Any, feeds: Mapping[str, np.ndarray]) -> Feeds:
    """float32 samples cast to float16 for the inputs the session takes as float16 (fp16_io)."""
    halves = {i.name for i in session.get_inputs() if i.type == "tensor(float16)"}
    return {
        name: a.astype(np.float16) if name in halves and a.dtype == np.float32 else a
        for name, a in feeds.items()
    }


def _at_batch(samples: Mapping[str, np.ndarray], batch: int, batch_axis: bool) -> Feeds:
    return take_rows(samples, batch) if batch_axis else dict(samples)


def _latency(source: Any, derived: Any, feeds: Feeds) -> Latency:
    derived_feeds = _cast_for(derived, feeds)
    for _ in range(WARMUP):
        source.run(None, feeds)
        derived.run(None, derived_feeds)
    times: tuple[list[float], list[float]] = ([], [])
    start = time.perf_counter()
    while len(times[0]) < MIN_PAIRS or (len(times[0]) < MAX_PAIRS and time.perf_counter() - start < BUDGET_S):
        times[0].append(_timed(source, feeds))
        times[1].append(_timed(derived, derived_feeds))
    return Latency(float(np.median(times[0])) * 1e3, float(np.median(times[1])) * 1e3)


def _timed(session: Any, feeds: Feeds) -> float:
    start = time.perf_counter()
    session.run(None, feeds)
    return time.perf_counter() - start
