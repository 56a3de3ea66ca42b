"""Shared memory where the transport is the cost: a 602 KB input to a cheap model, side by side.

Model `pool`: x[N,3,224,224] FP32 -> GlobalAveragePool -> y[N,3,1,1]. Starts ortserve as run_all.py
does, registers the model, then runs the load generator at C=16 with `--protocol ortserve` (tensor
bytes in the gRPC message) and `--protocol ortserve-shm` (inputs in a registered system shared memory
region), alternating, and prints throughput, latency and server CPU per request.

    .venv/bin/python bench/shm_large_input.py [--rounds 2] [--duration 8]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import onnx
from onnx import TensorProto, helper

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
import run_all  # noqa: E402


def pool_model(path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("GlobalAveragePool", ["x"], ["y"])],
        "pool",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 224, 224])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 1, 1])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)


def bench(server: str, protocol: str, duration: float, sampler: run_all.CpuSampler) -> str:
    cmd = [run_all.PY, "-m", "ortserve", "bench", "pool", "--server", server, "--protocol", protocol]
    cmd += ["-c", "16", "--duration", str(duration), "--warmup", "2", "--json", "--progress", "never"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    r = json.loads(done.stdout.strip().splitlines()[-1])
    cpu_ms = (sampler.cores(*r["window_unix"]) or 0.0) / r["throughput_rps"] * 1000
    lat = r["latency_ms"]
    return (
        f"{protocol:13s} {r['throughput_rps']:7.1f} req/s  p50 {lat['p50']:.2f} ms  p99 {lat['p99']:.2f} ms  "
        f"server CPU/request {cpu_ms:.3f} ms  errors {r['errors']}  request bytes {r['request_bytes']}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--duration", type=float, default=8.0)
    args = p.parse_args()
    tmp = Path(tempfile.mkdtemp(prefix="ortserve-shm-bench-"))
    pool_model(tmp / "pool.onnx")
    cmd = [run_all.PY, "-m", "ortserve", "serve", "--host", "127.0.0.1", "--port", "0"]
    cmd += ["--log-level", "warning", "--port-file", str(tmp / "port"), "--metrics-port", "0"]
    cmd += ["--data-dir", str(tmp / "data")]
    with run_all.started(cmd, tmp / "port", tmp / "server.log", "ortserve") as (port, pid):
        server = f"127.0.0.1:{port}"
        run_all.register(server, tmp / "pool.onnx", "pool", delay_us=2000)
        sampler = run_all.CpuSampler(pid)
        try:
            for _ in range(args.rounds):
                for protocol in ("ortserve", "ortserve-shm"):
                    print(bench(server, protocol, args.duration, sampler), flush=True)
        finally:
            sampler.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
