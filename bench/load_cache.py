"""The optimized-model cache: how long the server's session load takes for a bench model, side by side.

    cold    no cache: ONNX Runtime optimizes the graph on every load (ortserve before the cache)
    miss    first load with the cache: optimize, then save the optimized graph (fsync, rename)
    cached  later loads: the saved graph, graph optimizations off

Each round runs the three once (a fresh cache directory per round; miss first, then cold and cached
in alternating order) through `create_session`, the path the server's pool takes; medians over the
rounds, and cold / cached.

    .venv/bin/python bench/load_cache.py [--models cnn mlp] [--rounds 40]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from types import MappingProxyType

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "src"))
import models  # noqa: E402
import onnxruntime as ort  # noqa: E402

from ortserve.logging import configure_logging  # noqa: E402
from ortserve.records import BatchingSettings, ModelVersionRecord, SessionSettings, VersionState  # noqa: E402
from ortserve.runtime.load_cache import LoadCache, Result  # noqa: E402
from ortserve.runtime.session import SessionDefaults, create_session  # noqa: E402
from ortserve.signature import Signature  # noqa: E402
from ortserve.store import hash_file  # noqa: E402


def record(path: Path) -> ModelVersionRecord:
    size, sha256 = hash_file(path)
    return ModelVersionRecord(
        model=path.stem,
        version=1,
        sha256=sha256,
        size_bytes=size,
        opset=models.OPSET,
        producer="ortserve-bench",
        signature=Signature((), (), True),
        providers=(),
        batching=BatchingSettings(),
        session=SessionSettings(),
        state=VersionState.READY,
        error="",
        description="",
        labels=MappingProxyType({}),
        created_by="",
        created_at=datetime.now(UTC),
        path=str(path),
    )


def load_ms(rec: ModelVersionRecord, defaults: SessionDefaults) -> float:
    start = time.perf_counter()
    create_session(rec, defaults)
    return (time.perf_counter() - start) * 1000


def measure(path: Path, rounds: int, work: Path) -> dict[str, list[float]]:
    rec = record(path)
    times: dict[str, list[float]] = {"cold": [], "miss": [], "cached": []}
    for number in range(rounds + 1):  # round 0 warms up ORT and the page cache, and is dropped
        results: list[Result] = []
        cache = LoadCache(work / f"{path.stem}-{number}", 0, results.append)
        cached = SessionDefaults(load_cache=cache)
        sample = {"miss": load_ms(rec, cached)}
        # cold and cached alternate which goes first, so neither always follows the miss's fsync
        for kind in ("cold", "cached") if number % 2 else ("cached", "cold"):
            sample[kind] = load_ms(rec, cached if kind == "cached" else SessionDefaults())
        assert results == ["miss", "hit"], results
        if number:
            for kind, ms in sample.items():
                times[kind].append(ms)
    return times


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", nargs="+", default=["cnn"], choices=sorted(models.BUILDERS))
    parser.add_argument("--rounds", type=int, default=40)
    args = parser.parse_args()
    configure_logging("warning")  # as the server runs: the cache's debug lines filtered
    print(
        f"{datetime.now(UTC):%Y-%m-%d} {platform.machine()} {_cpu_name()}, onnxruntime {ort.__version__}, "
        f"graph level 'all', median of {args.rounds} rounds"
    )
    print(f"{'model':6} {'cold ms':>8} {'miss ms':>8} {'cached ms':>10} {'cold/cached':>12}")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in args.models:
            times = measure(models.build(name, work), args.rounds, work)
            cold, miss, cached = (statistics.median(times[k]) for k in ("cold", "miss", "cached"))
            print(f"{name:6} {cold:8.2f} {miss:8.2f} {cached:10.2f} {cold / cached:11.2f}x")


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as file:
            return next((line.split(":", 1)[1].strip() for line in file if line.startswith("model name")), "")
    except OSError:
        return platform.processor()


if __name__ == "__main__":
    main()
