"""Two servers behind one client: round robin across both, and no failed call when one stops."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import numpy as np

from ortserve.client import Client, RetryPolicy
from tests.sdk.conftest import make_server, served

CALLS = 200
THREADS = 4
STOP_AFTER = 60  # calls completed before one server stops


async def test_failover_when_one_server_stops_mid_run(tmp_path: Path, model_files: dict[str, Path]) -> None:
    db = f"sqlite:///{tmp_path / 'shared-registry.db'}"
    first = make_server(tmp_path / "data", {"linear": model_files["linear"]}, db=db)
    second = make_server(tmp_path / "data", {}, db=db)  # the same registry database and model store
    await first.start()
    await second.start()
    stopped = False
    try:
        addresses = [f"127.0.0.1:{first.port}", f"127.0.0.1:{second.port}"]
        x = np.random.default_rng(0).standard_normal((2, 16)).astype(np.float32)
        halfway = threading.Event()
        lock = threading.Lock()
        failures: list[grpc.RpcError] = []
        versions: list[int] = []
        client = Client(addresses, timeout=10, retry=RetryPolicy())
        client.wait_ready(10)

        def run(calls: int) -> None:
            # Several threads, so calls are in flight on both servers when one stops.
            for _ in range(calls):
                try:
                    version = client.predict("linear", {"x": x}).version
                except grpc.RpcError as exc:
                    with lock:
                        failures.append(exc)
                else:
                    with lock:
                        versions.append(version)
                        if len(versions) == STOP_AFTER:
                            halfway.set()

        callers = [asyncio.create_task(asyncio.to_thread(run, CALLS // THREADS)) for _ in range(THREADS)]
        await asyncio.to_thread(halfway.wait, 60)
        before = served(first), served(second)
        await first.stop(0)
        stopped = True
        await asyncio.gather(*callers)
        client.close()

        assert failures == [], [f"{e.code()}: {e.details()}" for e in failures]  # type: ignore[attr-defined]
        assert versions == [1] * CALLS
        assert before[0] > 0 and before[1] > 0, f"round robin used one server only before the stop: {before}"
        assert served(second) > before[1], "the surviving server took no calls after the stop"
    finally:
        if not stopped:
            await first.stop(0)
        await second.stop(0)
