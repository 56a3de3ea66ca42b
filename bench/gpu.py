"""GPU figures: `mlp` and `cnn` (bench/models.py) throughput on CUDA against the CPU, and fp16 against
fp32 on CUDA, in one run (a benchmark, not a test).

Each variant is a session as the server builds it (ortserve.runtime.session: the server's session
options; on CUDA the IO-binding run, inputs and outputs in host memory, as a request's are). The
figure is rows per second at each batch size: the variants take turns, round after round, each
round running one variant for a block of at least BLOCK_S; the median over rounds is printed. fp16
is made by the toolkit's fp16 recipe (ONNX Runtime's float16 converter, inputs and outputs kept
float32), and its outputs are compared with fp32's on the same rows.

    make bench-gpu        # or: .venv-gpu/bin/python bench/gpu.py [--rounds 7] [--batches 1,32,256]

Without CUDA it prints why and exits 0.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import onnxruntime as ort

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import models  # noqa: E402

from ortserve.records import ProviderSpec, SessionSettings  # noqa: E402
from ortserve.runtime.session import OrtSession, SessionDefaults, open_session, session_options  # noqa: E402
from ortserve.toolkit import transforms  # noqa: E402
from ortserve.toolkit.recipes import Fp16  # noqa: E402

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"
BLOCK_S = 0.2


@dataclass(frozen=True, slots=True)
class Variant:
    label: str
    path: Path
    providers: tuple[str, ...]


def session(variant: Variant) -> OrtSession:
    defaults = SessionDefaults(providers=tuple(ProviderSpec(p) for p in variant.providers))
    opts = session_options(SessionSettings(), defaults)
    created = ort.InferenceSession(str(variant.path), opts, providers=list(variant.providers))
    made = open_session(created)
    if made.provider != variant.providers[0]:
        raise SystemExit(f"{variant.label}: the session runs on {made.providers}, not {variant.providers[0]}")
    return made


def block(run: OrtSession, feeds: dict[str, np.ndarray]) -> float:
    """Rows per second over one block of runs of at least BLOCK_S."""
    rows = next(iter(feeds.values())).shape[0]
    runs, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < BLOCK_S or runs < 3:
        run.run(feeds)
        runs += 1
    return runs * rows / elapsed


def throughput(
    variants: list[Variant], model: str, batches: list[int], rounds: int
) -> dict[tuple[str, int], float]:
    sessions = {v.label: session(v) for v in variants}
    figures: dict[tuple[str, int], float] = {}
    for batch in batches:
        feeds = {"x": models.example_input(model, rows=batch, seed=batch)}
        for made in sessions.values():
            made.run(feeds)  # warm-up: allocations, cuDNN algorithm search
        samples: dict[str, list[float]] = {label: [] for label in sessions}
        for _ in range(rounds):
            for label, made in sessions.items():
                samples[label].append(block(made, feeds))
        for label, values in samples.items():
            figures[(label, batch)] = statistics.median(values)
    return figures


def fp16_difference(fp32: Variant, fp16: Variant, model: str) -> tuple[float, float]:
    """Max abs diff and argmax agreement of fp16 against fp32 on CUDA, on 256 rows."""
    feeds = {"x": models.example_input(model, rows=256, seed=2)}
    a, b = session(fp32).run(feeds)[0], session(fp16).run(feeds)[0]
    return float(np.abs(a - b).max()), float((a.argmax(axis=1) == b.argmax(axis=1)).mean())


def report(
    model: str, figures: dict[tuple[str, int], float], batches: list[int], diff: tuple[float, float]
) -> None:
    print(f"\n{model}: rows/s (median of rounds)")
    print(
        f"{'batch':>6} {'cpu fp32':>12} {'cuda fp32':>12} {'cuda fp16':>12} {'cuda/cpu':>9} {'fp16/fp32':>10}"
    )
    for batch in batches:
        cpu, gpu, half = (figures[(label, batch)] for label in ("cpu fp32", "cuda fp32", "cuda fp16"))
        print(f"{batch:>6} {cpu:>12.0f} {gpu:>12.0f} {half:>12.0f} {gpu / cpu:>8.2f}x {half / gpu:>9.2f}x")
    print(f"fp16 against fp32 on CUDA: max abs diff {diff[0]:.4g}, argmax agreement {diff[1]:.4f}")


def gpu_name() -> str:
    smi = shutil.which("nvidia-smi")
    if smi is None:
        return "GPU unknown (no nvidia-smi)"
    query = [smi, "--query-gpu=name", "--format=csv,noheader"]
    listed = subprocess.run(query, capture_output=True, text=True, timeout=30, check=False)
    return (
        listed.stdout.strip().splitlines()[0]
        if listed.returncode == 0 and listed.stdout.strip()
        else "GPU unknown"
    )


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--batches", default="1,32,256")
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    if CUDA not in ort.get_available_providers():
        available = ort.get_available_providers()
        print(f"skipped: no CUDA device: onnxruntime {ort.__version__} reports providers {available}")
        return 0
    batches = [int(b) for b in args.batches.split(",")]
    print(
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC, onnxruntime-gpu {ort.__version__}, {gpu_name()}, "
        f"{platform.machine()} with {os.cpu_count()} CPUs; {args.rounds} rounds of {BLOCK_S} s blocks "
        "per variant and batch size"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for model in args.models.split(","):
            source = models.build(model, Path(tmp))
            half = Path(tmp) / f"{model}-fp16.onnx"
            transforms.apply(Fp16(), source, half, calibration=None, batch_axis=True, custom_op_libraries=())
            variants = [
                Variant("cpu fp32", source, (CPU,)),
                Variant("cuda fp32", source, (CUDA, CPU)),
                Variant("cuda fp16", half, (CUDA, CPU)),
            ]
            figures = throughput(variants, model, batches, args.rounds)
            report(model, figures, batches, fp16_difference(variants[1], variants[2], model))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
