"""Two `ortserve serve` replicas sharing one PostgreSQL registry and one model store: a promotion made
through one replica reaches the other within 2 s, with no failed request on the way."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.client import to_tensor
from ortserve.store import hash_file
from tests import onnx_models
from tests.integration.processes import ServerProcess, start_server

pytestmark = pytest.mark.postgres

MODEL = "replicated"
CONVERGENCE_S = 2.0
WAIT_S = 30.0
CALLERS = 4
CHUNK = 1 << 20
X = np.ones((1, 16), np.float32)


@dataclass
class Replica:
    process: ServerProcess
    channel: grpc.Channel
    inference: ipb_grpc.InferenceServiceStub
    registry: rpb_grpc.RegistryServiceStub


def connect(process: ServerProcess) -> Replica:
    channel = grpc.insecure_channel(process.address)
    grpc.channel_ready_future(channel).result(timeout=10)
    return Replica(
        process, channel, ipb_grpc.InferenceServiceStub(channel), rpb_grpc.RegistryServiceStub(channel)
    )


def register_requests(path: Path, name: str) -> Iterator[rpb.RegisterModelRequest]:
    size, sha256 = hash_file(path)
    yield rpb.RegisterModelRequest(
        manifest=rpb.RegisterManifest(name=name, size_bytes=size, sha256=sha256, load=True)
    )
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield rpb.RegisterModelRequest(chunk=chunk)


def predict_request(version: str = "") -> ipb.PredictRequest:
    return ipb.PredictRequest(model=MODEL, version=version, inputs=[to_tensor("x", X)])


@dataclass
class Callers:
    """Threads calling one replica back to back, recording each caller's versions and any failure."""

    replica: Replica
    seen: list[list[int]] = field(default_factory=lambda: [[] for _ in range(CALLERS)])
    failures: list[str] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)
    threads: list[threading.Thread] = field(default_factory=list)

    def start(self) -> None:
        self.threads = [threading.Thread(target=self._call, args=(i,), daemon=True) for i in range(CALLERS)]
        for thread in self.threads:
            thread.start()

    def _call(self, index: int) -> None:
        while not self.stop.is_set():
            try:
                response = self.replica.inference.Predict(predict_request(), timeout=10)
                self.seen[index].append(response.model_version)
            except grpc.RpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(15)
            assert not thread.is_alive(), "a caller is stuck"


@pytest.fixture
def replicas(tmp_path: Path, pg_url: str) -> Iterator[tuple[Replica, Replica]]:
    data = tmp_path / "data"  # one model store for both
    started: list[Replica] = []
    try:
        for name in ("a", "b"):
            process = start_server(tmp_path, name, "--db", pg_url, "--data-dir", str(data))
            started.append(connect(process))
        yield started[0], started[1]
    finally:
        for replica in started:
            replica.channel.close()
            replica.process.stop()


def wait_for_version(replica: Replica, version: int, timeout_s: float) -> float:
    """Poll Predict (no version selector) until it answers `version`; seconds it took."""
    started = time.monotonic()
    last = ""
    while time.monotonic() - started < timeout_s:
        try:
            answered = replica.inference.Predict(predict_request(), timeout=5).model_version
            if answered == version:
                return time.monotonic() - started
            last = f"version {answered}"
        except grpc.RpcError as exc:
            last = f"{exc.code().name}: {exc.details()}"
        time.sleep(0.01)
    raise AssertionError(
        f"{replica.process.address} did not serve version {version} within {timeout_s} s (last: {last})\n"
        f"{replica.process.output()}"
    )


def test_promotion_through_one_replica_reaches_the_other_within_2_s(
    replicas: tuple[Replica, Replica], tmp_path: Path
) -> None:
    a, b = replicas
    paths = [tmp_path / "v1.onnx", tmp_path / "v2.onnx"]
    onnx_models.linear(paths[0], seed=1)
    onnx_models.linear(paths[1], seed=2)

    v1 = a.registry.RegisterModel(register_requests(paths[0], MODEL), timeout=30).version
    assert v1.version == 1 and v1.state == mpb.VERSION_STATE_READY, v1
    a.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=1), timeout=30)
    wait_for_version(b, 1, WAIT_S)

    callers = Callers(b)
    callers.start()
    try:
        time.sleep(0.5)
        v2 = a.registry.RegisterModel(register_requests(paths[1], MODEL), timeout=30).version
        assert v2.version == 2 and v2.state == mpb.VERSION_STATE_READY, v2
        time.sleep(0.5)
        a.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=2), timeout=30)
        elapsed = wait_for_version(b, 2, WAIT_S)
        time.sleep(0.5)
    finally:
        callers.finish()

    assert elapsed < CONVERGENCE_S, f"replica B served the promoted version after {elapsed:.2f} s"
    assert callers.failures == []
    for seen in callers.seen:
        assert seen, "a caller got no answer"
        assert set(seen) <= {1, 2}
        switched = seen.index(2) if 2 in seen else len(seen)
        assert set(seen[switched:]) <= {2}, "a caller saw version 1 again after version 2"
    assert any(2 in seen for seen in callers.seen)

    model = b.registry.GetModel(rpb.GetModelRequest(name=MODEL), timeout=10).model
    assert [(x.name, x.version, x.previous_version) for x in model.aliases] == [("production", 2, 1)]
    assert {v.version for v in model.versions} == {1, 2}
    for replica in (a, b):
        assert replica.inference.Predict(predict_request("production"), timeout=10).model_version == 2
        assert replica.inference.Predict(predict_request("1"), timeout=10).model_version == 1
