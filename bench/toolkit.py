"""The toolkit's figures side by side in one run: int8 dynamic, int8 static and fp16 against fp32.

For `mlp` and `cnn` (bench/models.py) each derived model is made by the product's own code
(`ortserve.toolkit.derive.derive_model`, in its limited subprocess) and then measured here, in this
process, against the fp32 source:
- size: the file's bytes;
- CPU latency at batch 1 and batch 32: ONNX Runtime with 1 intra-op thread and the server's session
  settings (bench/ort_ceiling.py make_session); the variants take turns, round after round, each
  round timing a block of runs per variant; the figure is the median over rounds of the per-run
  mean;
- max abs diff and argmax agreement on 256 generated rows (ortserve.toolkit.report.compare_outputs).

Inputs are generated from the signature (standard normal float32): the static quantizer calibrates
on 64 rows of seed 1; the comparison uses 256 held-out rows of seed 2. Then the optimized-model
cache's load-time ratio for `cnn` (bench/load_cache.py).

    .venv/bin/python bench/toolkit.py [--rounds 15] [--models mlp,cnn]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402
from ort_ceiling import make_session  # noqa: E402

from ortserve.runtime.validation import check_model_file  # noqa: E402
from ortserve.signature import Signature  # noqa: E402
from ortserve.toolkit.derive import Derived, derive_model  # noqa: E402
from ortserve.toolkit.recipes import Fp16, Quantize, Recipe  # noqa: E402
from ortserve.toolkit.report import EvaluationReport, compare_outputs  # noqa: E402
from ortserve.toolkit.samples import generate_samples, to_npz  # noqa: E402
from ortserve.toolkit.sandbox import SandboxLimits  # noqa: E402

CALIBRATION_ROWS = 64
EVALUATION_ROWS = 256
BATCHES = (1, 32)
BLOCK_S = 0.05  # each variant's timed block in a round runs at least this long
LIMITS = SandboxLimits(memory_bytes=4 << 30, timeout_s=600)
SOURCE = "fp32 (source)"


@dataclass(frozen=True, slots=True)
class Row:
    model: str
    variant: str
    size: int
    latency_ms: dict[int, float]
    max_abs_diff: float
    agreement: float | None


def recipes(calibration: Mapping[str, np.ndarray]) -> dict[str, Recipe]:
    digest = hashlib.sha256(to_npz(calibration)).hexdigest()
    return {
        "int8 dynamic": Quantize(mode="dynamic"),
        "int8 static": Quantize(mode="static", calibration_sha256=digest, calibration_rows=CALIBRATION_ROWS),
        "fp16": Fp16(),
    }


def derive_all(source: Path, signature: Signature, work: Path) -> dict[str, Derived]:
    """Each derived file with derive_model's own report, by variant name."""
    calibration = generate_samples(signature, CALIBRATION_ROWS, seed=1)
    derived: dict[str, Derived] = {}
    for variant, recipe in recipes(calibration).items():
        work_dir = work / variant.replace(" ", "-")
        work_dir.mkdir()
        derived[variant] = derive_model(
            source,
            recipe,
            signature=signature,
            samples=None,
            calibration=calibration if isinstance(recipe, Quantize) and recipe.mode == "static" else None,
            work_dir=work_dir,
            limits=LIMITS,
        )
    return derived


def feeds(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The inputs in the session's own element types (an fp16 model may take float16)."""
    types = {i.name: np.float16 if i.type == "tensor(float16)" else None for i in session.get_inputs()}
    return {name: a.astype(types[name]) if types[name] else a for name, a in inputs.items()}


def latencies(
    sessions: Mapping[str, ort.InferenceSession], inputs: Mapping[str, np.ndarray], rounds: int
) -> dict[str, float]:
    """Median over rounds of each variant's mean ms per run; the variants alternate within a round."""
    prepared = {v: feeds(s, inputs) for v, s in sessions.items()}
    block = {v: _block_runs(s, prepared[v]) for v, s in sessions.items()}
    samples: dict[str, list[float]] = {v: [] for v in sessions}
    for _ in range(rounds):
        for variant, session in sessions.items():
            start = time.perf_counter()
            for _ in range(block[variant]):
                session.run(None, prepared[variant])
            samples[variant].append((time.perf_counter() - start) * 1000 / block[variant])
    return {v: statistics.median(s) for v, s in samples.items()}


def _block_runs(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> int:
    """Runs per timed block: enough to last BLOCK_S (after two warm-up runs)."""
    session.run(None, dict(inputs))
    start = time.perf_counter()
    session.run(None, dict(inputs))
    return max(1, round(BLOCK_S / max(time.perf_counter() - start, 1e-6)))


def measure(name: str, work: Path, rounds: int) -> tuple[list[Row], dict[str, EvaluationReport]]:
    """This script's figures for the source and each variant, and derive_model's reports."""
    source = models.build(name, work)
    signature = check_model_file(source).signature
    derived = derive_all(source, signature, work)
    paths = {SOURCE: source, **{v: d.path for v, d in derived.items()}}
    sessions = {v: make_session(str(p), 1) for v, p in paths.items()}
    timing = {b: latencies(sessions, generate_samples(signature, b, seed=3), rounds) for b in BATCHES}
    held_out = generate_samples(signature, EVALUATION_ROWS, seed=2)
    reference = _outputs(sessions[SOURCE], held_out)
    rows = []
    for variant, session in sessions.items():
        compared = compare_outputs(reference, _outputs(session, held_out))[0]
        rows.append(
            Row(
                name,
                variant,
                paths[variant].stat().st_size,
                {b: timing[b][variant] for b in BATCHES},
                compared.max_abs_diff,
                compared.argmax_agreement,
            )
        )
    return rows, {v: d.report for v, d in derived.items()}


def _outputs(session: ort.InferenceSession, inputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    names = [o.name for o in session.get_outputs()]
    values = session.run(names, feeds(session, inputs))
    return {n: np.asarray(v, dtype=np.float32) for n, v in zip(names, values, strict=True)}


def table(rows: list[Row]) -> str:
    sources = {r.model: r for r in rows if r.variant == SOURCE}
    lines = [
        "| model | variant | size | vs fp32 | batch 1 ms | vs fp32 | batch 32 ms | vs fp32 "
        "| max abs diff | argmax agreement |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        s = sources[r.model]
        agreement = "-" if r.agreement is None else f"{r.agreement:.1%}"
        lines.append(
            f"| {r.model} | {r.variant} | {r.size / 1e6:.2f} MB | {r.size / s.size:.2f}x "
            f"| {r.latency_ms[1]:.3f} | {r.latency_ms[1] / s.latency_ms[1]:.2f}x "
            f"| {r.latency_ms[32]:.2f} | {r.latency_ms[32] / s.latency_ms[32]:.2f}x "
            f"| {r.max_abs_diff:.2g} | {agreement} |"
        )
    return "\n".join(lines)


def report_table(reports: Mapping[str, Mapping[str, EvaluationReport]]) -> str:
    """derive_model's own reports, as the registry stores them (measured in its subprocess)."""
    lines = [
        "| model | variant | samples | size | batch 1 | batch 32 | max abs diff | argmax agreement |",
        "|---|---|---|---:|---:|---:|---:|---:|",
    ]
    for model, by_variant in reports.items():
        for variant, r in by_variant.items():
            out = r.outputs[0]
            agreement = "-" if out.argmax_agreement is None else f"{out.argmax_agreement:.1%}"
            lines.append(
                f"| {model} | {variant} | {r.sample_rows} {r.samples} | {r.size_ratio:.2f}x "
                f"| {r.latency_ratio_batch1:.2f}x | {r.latency_ratio_batch32:.2f}x "
                f"| {out.max_abs_diff:.2g} | {agreement} |"
            )
    return "\n".join(lines)


def load_cache_figure() -> str:
    """The optimized-model cache's figure for cnn, from bench/load_cache.py when it is there."""
    script = HERE / "load_cache.py"
    if not script.exists():
        return "bench/load_cache.py is not there: no cache figure"
    done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, check=True)
    return done.stdout.strip()


def header() -> str:
    return (
        f"{time.strftime('%Y-%m-%d')}, {platform.machine()}, {os.cpu_count()} cores, "
        f"Python {platform.python_version()}, onnxruntime {ort.__version__}; "
        f"1 intra-op thread; accuracy on {EVALUATION_ROWS} generated rows"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15, help="timing rounds per batch size")
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    rows: list[Row] = []
    reports: dict[str, dict[str, EvaluationReport]] = {}
    with tempfile.TemporaryDirectory(prefix="ortserve-bench-toolkit-") as tmp:
        for name in args.models.split(","):
            work = Path(tmp) / name
            work.mkdir()
            measured, reports[name] = measure(name, work, args.rounds)
            rows += measured
    print(header())
    print()
    print(table(rows))
    print()
    print("derive_model's own reports (ratios to the source), as the registry stores them:")
    print()
    print(report_table(reports))
    print()
    print(load_cache_figure())


if __name__ == "__main__":
    main()
