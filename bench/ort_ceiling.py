"""The compute ceiling: ONNX Runtime in this process, no gRPC, no queueing.

`threads` threads each call `session.run` on the same per-request input (`rows` rows) back to back
for the duration, sharing one session (Run is thread-safe and releases the GIL): the best a server
could do per request on this machine without batching. `--batched` instead runs one session.run
with threads x rows rows at a time, a single caller: the ceiling of a server that batches
perfectly (compare its rows/s).

    python bench/ort_ceiling.py MODEL.onnx --threads 16 --duration 8 --json
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
from ortserve.bench.stats import summarize

_NUMPY = {
    "tensor(float)": np.float32,
    "tensor(double)": np.float64,
    "tensor(int64)": np.int64,
    "tensor(int32)": np.int32,
    "tensor(float16)": np.float16,
}


def make_session(path: str, intra_op_threads: int) -> ort.InferenceSession:
    """Session settings like the server's defaults: sequential, no spinning, all graph optimizations."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = intra_op_threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])


def feeds_for(session: ort.InferenceSession, rows: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for i in session.get_inputs():
        shape = [
            rows if k == 0 and not isinstance(d, int) else (d if isinstance(d, int) else 1)
            for k, d in enumerate(i.shape)
        ]
        dtype = _NUMPY.get(i.type, np.float32)
        feeds[i.name] = rng.standard_normal(shape).astype(dtype)
    return feeds


def run(
    path: str, *, threads: int, rows: int, duration_s: float, warmup_s: float, intra: int
) -> dict[str, Any]:
    session = make_session(path, intra)
    feeds = feeds_for(session, rows)
    session.run(None, feeds)
    latencies: list[list[int]] = [[] for _ in range(threads)]
    state = {"measuring": False, "stop": False}

    def worker(out: list[int]) -> None:
        clock = time.perf_counter_ns
        run_ = session.run
        while not state["stop"]:
            t0 = clock()
            run_(None, feeds)
            if state["measuring"]:
                out.append(clock() - t0)

    pool = [threading.Thread(target=worker, args=(latencies[k],), daemon=True) for k in range(threads)]
    for t in pool:
        t.start()
    time.sleep(warmup_s)
    state["measuring"] = True
    t_start, cpu_start, unix_start = time.perf_counter(), time.process_time(), time.time()
    time.sleep(duration_s)
    state["measuring"] = False
    elapsed = time.perf_counter() - t_start
    cpu = time.process_time() - cpu_start
    state["stop"] = True
    for t in pool:
        t.join()
    flat = [x for part in latencies for x in part]
    summary = summarize(flat, elapsed, rows_per_request=rows)
    return {
        "protocol": "in-process-ort",
        "model": Path(path).stem,
        "concurrency": threads,
        "batch_rows": rows,
        "intra_op_threads": intra,
        "client_cpu_cores": cpu / elapsed,
        "window_unix": [unix_start, unix_start + elapsed],
        **summary.as_dict(),
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", help="ONNX file")
    p.add_argument("--threads", type=int, default=1, help="callers in flight (the C of the served runs)")
    p.add_argument("--rows", type=int, default=1, help="rows per call")
    p.add_argument("--batched", action="store_true", help="one caller, threads x rows rows per call")
    p.add_argument("--duration", type=float, default=8.0)
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument(
        "--intra-op-threads",
        type=int,
        default=0,
        help="ONNX Runtime intra-op threads (0: 1 per caller when threads > 1, else all cores)",
    )
    p.add_argument("--json", action="store_true")
    args = p.parse_args()
    cores = os.cpu_count() or 1
    if args.batched:
        threads, rows = 1, args.threads * args.rows
        intra = args.intra_op_threads or cores
    else:
        threads, rows = args.threads, args.rows
        intra = args.intra_op_threads or (1 if threads > 1 else cores)
    result = run(
        args.model, threads=threads, rows=rows, duration_s=args.duration, warmup_s=args.warmup, intra=intra
    )
    result["batched"] = args.batched
    if args.json:
        print(json.dumps(result))
    else:
        lat = result["latency_ms"]
        print(
            f"{result['model']}: {threads} threads x {rows} rows, intra-op {intra}: "
            f"{result['throughput_rps']:.1f} calls/s, {result['rows_per_s']:.1f} rows/s, "
            f"p50 {lat['p50']:.3f} ms p99 {lat['p99']:.3f} ms"
        )


if __name__ == "__main__":
    main()
