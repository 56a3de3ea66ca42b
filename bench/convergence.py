"""Convergence of replicas: from a promote's return on replica A to the first answer from the new
version on replicas B and C, over N promotions.

Three `ortserve serve` processes share one PostgreSQL registry (a fresh schema, dropped afterwards)
and one model store. Two versions of one model are registered; A's `SetAlias` flips `production`
between them. As soon as each promote returns, one thread per replica B and C sends Predict
(selector "production") in a tight loop and records when the first answer names the new version.
The poll interval is set to 30 s, so what is measured is the LISTEN/NOTIFY path; `--poll-only`
also runs it with the listener off and the default 1 s poll, for comparison.

    .venv/bin/python bench/convergence.py [--promotions 20] [--pg postgresql+psycopg://root@127.0.0.1:5432/test]
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import numpy as np
import sqlalchemy as sa

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.client import to_tensor
from ortserve.examples import linear_model

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from run_all import started  # noqa: E402

MODEL = "converge"
REQUEST = ipb.PredictRequest(
    model=MODEL, version="production", inputs=[to_tensor("x", np.ones((1, 16), np.float32))]
)


@contextlib.contextmanager
def schema(pg: str) -> Iterator[str]:
    name = f"bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(pg, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{name}"'))
    try:
        yield f"{pg}?options=-csearch_path%3D{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{name}" CASCADE'))
        admin.dispose()


def first_answer_from(stub: ipb_grpc.InferenceServiceStub, version: int, limit_s: float = 30.0) -> float:
    """perf_counter time of the first Predict answered by `version`."""
    end = time.perf_counter() + limit_s
    while time.perf_counter() < end:
        try:
            if stub.Predict(REQUEST, timeout=5).model_version == version:
                return time.perf_counter()
        except grpc.RpcError as exc:  # the model is not known there yet
            if exc.code() not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
                raise
    raise RuntimeError(f"no answer from version {version} within {limit_s} s")


def _record(seen: dict[str, float], name: str, stub: ipb_grpc.InferenceServiceStub, version: int) -> None:
    seen[name] = first_answer_from(stub, version)


def measure(addresses: list[str], promotions: int) -> dict[str, list[float]]:
    channels = [grpc.insecure_channel(a) for a in addresses]
    for channel in channels:
        grpc.channel_ready_future(channel).result(timeout=30)
    registry = rpb_grpc.RegistryServiceStub(channels[0])
    followers = {name: ipb_grpc.InferenceServiceStub(c) for name, c in zip("BC", channels[1:], strict=True)}
    delays: dict[str, list[float]] = {"B": [], "C": []}
    for stub in followers.values():  # every replica serves version 1 before the first promotion
        first_answer_from(stub, 1)
    for i in range(promotions):
        version = 2 if i % 2 == 0 else 1
        seen: dict[str, float] = {}
        registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=version), timeout=30)
        returned = time.perf_counter()
        threads = [
            threading.Thread(target=_record, args=(seen, name, stub, version))
            for name, stub in followers.items()
        ]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        for name in followers:
            delays[name].append((seen[name] - returned) * 1000)
    for channel in channels:
        channel.close()
    return delays


def run(pg: str, promotions: int, poll_s: float, listen: bool) -> dict[str, list[float]]:
    with tempfile.TemporaryDirectory(prefix="ortserve-converge-") as tmp, schema(pg) as url:
        work = Path(tmp)
        data = work / "data"
        for seed in (1, 2):
            (work / f"v{seed}.onnx").write_bytes(linear_model(seed=seed))
        os.environ["ORTSERVE_POLL_INTERVAL_S"] = str(poll_s)
        os.environ["ORTSERVE_LISTEN_FOR_CHANGES"] = "true" if listen else "false"
        with contextlib.ExitStack() as stack:
            addresses = []
            for name in "ABC":
                cmd = [
                    sys.executable, "-m", "ortserve", "serve", "--port", "0", "--metrics-port", "0",
                    "--port-file", str(work / f"{name}.port"), "--data-dir", str(data), "--db", url,
                    "--log-level", "warning",
                ]  # fmt: skip
                port, _pid = stack.enter_context(
                    started(cmd, work / f"{name}.port", work / f"{name}.log", f"replica {name}")
                )
                addresses.append(f"127.0.0.1:{port}")
            register(addresses[0], work)
            return measure(addresses, promotions)


def register(address: str, work: Path) -> None:
    from ortserve.client import Client

    with Client(address) as client:
        for seed in (1, 2):
            client.register(work / f"v{seed}.onnx", MODEL)
        client.promote(MODEL, 1)


def summary(delays: dict[str, list[float]]) -> dict[str, float]:
    every = delays["B"] + delays["C"]
    return {
        "p50_ms": statistics.median(every),
        "max_ms": max(every),
        "mean_ms": statistics.fmean(every),
        "samples": len(every),
    }


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--promotions", type=int, default=20)
    parser.add_argument("--pg", default="postgresql+psycopg://root@127.0.0.1:5432/test")
    parser.add_argument("--poll-only", action="store_true", help="also measure with polling alone (1 s)")
    args = parser.parse_args()
    report = {
        "date": dt.datetime.now(dt.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "machine": f"{platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}",
        "notify": summary(run(args.pg, args.promotions, poll_s=30.0, listen=True)),
    }
    if args.poll_only:
        report["poll_1s"] = summary(run(args.pg, args.promotions, poll_s=1.0, listen=False))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
