"""`ortserve serve --workers 2` as users run it: two worker processes share the gRPC port under one
supervisor. The kernel spreads connections over the workers, so each check opens many fresh
connections (a local subchannel pool: one TCP connection per channel) and tells the workers apart
by the `worker` label the supervisor's /metrics adds to each worker's samples.

The tests share one supervisor and run in file order; the SIGTERM test stops it. The PostgreSQL
test starts its own."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from tests import onnx_models
from tests.integration.processes import ServerProcess, start_server
from tests.server_calls import Connection, predict, register

WORKERS = ("0", "1")
CONNECTIONS = 16  # all on one worker by chance: 2 * 2**-16
WAIT_S = 30.0
MODEL = "durable"


@dataclass
class Supervised:
    process: ServerProcess
    metrics_port: int
    workdir: Path

    def metrics(self, name: str, **labels: str) -> dict[str, float]:
        """The samples called `name` with these labels, by worker."""
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            text = answer.read().decode()
        found: dict[str, float] = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name == name and labels.items() <= sample.labels.items():
                    worker = sample.labels["worker"]
                    found[worker] = found.get(worker, 0.0) + sample.value
        return found

    def pids(self) -> dict[str, int]:
        return {w: int(pid) for w, pid in self.metrics("ortserve_worker_pid").items()}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


@pytest.fixture(scope="module")
def supervised(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Supervised]:
    workdir = tmp_path_factory.mktemp("workers")
    metrics_port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ORTSERVE_POLL_INTERVAL_S", "0.2")
        args = ("--workers", "2", "--metrics-port", str(metrics_port), "--data-dir", str(workdir / "data"))
        process = start_server(workdir, "supervisor", *args)
    yield Supervised(process, metrics_port, workdir)
    process.stop()


def fresh(supervised: Supervised) -> Connection:
    """A channel with a connection of its own (the kernel picks its worker)."""
    channel = grpc.insecure_channel(
        supervised.process.address, options=[("grpc.use_local_subchannel_pool", 1)]
    )
    return Connection(channel, ipb_grpc.InferenceServiceStub(channel), rpb_grpc.RegistryServiceStub(channel))


def on_fresh_connections(supervised: Supervised, call: Callable[[Connection], object]) -> None:
    for _ in range(CONNECTIONS):
        conn = fresh(supervised)
        try:
            call(conn)
        finally:
            conn.close()


def until(condition: Callable[[], bool], what: str) -> None:
    deadline = time.monotonic() + WAIT_S
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def reaped(pid: int) -> bool:
    """Reaped by the supervisor: every thread has exited and closed its sockets (the process is
    a zombie once its main thread exits, possibly while other threads still hold the listener)."""
    return not Path(f"/proc/{pid}").exists()


def every_predict_succeeds(supervised: Supervised) -> bool:
    try:
        on_fresh_connections(supervised, predict)
    except grpc.RpcError as exc:
        # A worker that has not seen the registration yet, or is still loading the version.
        assert exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION), exc
        return False
    return True


def test_both_workers_answer_and_metrics_carry_each_worker(supervised: Supervised) -> None:
    listed = "/ortserve.api.v1.RegistryService/ListModels"
    on_fresh_connections(supervised, lambda c: c.registry.ListModels(rpb.ListModelsRequest(), timeout=10))
    answered = supervised.metrics("ortserve_rpc_total", method=listed, code="OK")
    assert set(answered) == set(WORKERS), answered
    assert sum(answered.values()) == CONNECTIONS
    assert supervised.metrics("ortserve_worker_up") == {"0": 1.0, "1": 1.0}


def test_a_model_registered_through_the_port_serves_on_every_worker(
    supervised: Supervised, tmp_path: Path
) -> None:
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path)
    conn = fresh(supervised)
    try:
        assert register(conn, path, MODEL).version == 1
    finally:
        conn.close()
    until(lambda: every_predict_succeeds(supervised), f"every worker to serve {MODEL}")
    served = supervised.metrics("ortserve_request_duration_seconds_count", model=MODEL)
    assert set(served) == set(WORKERS) and all(served.values()), served


def test_a_killed_worker_is_restarted_and_the_port_keeps_serving(supervised: Supervised) -> None:
    before = supervised.pids()
    os.kill(before["0"], signal.SIGKILL)
    # Connections queued at the killed worker are reset (the kernel's choice); once it is dead,
    # worker 1 serves every new one while worker 0 is down or starting.
    until(lambda: reaped(before["0"]), "the supervisor to reap the killed worker")
    on_fresh_connections(supervised, predict)
    until(lambda: supervised.metrics("ortserve_worker_restarts_total") == {"0": 1.0}, "the restart")
    after = supervised.pids()
    assert after["0"] != before["0"] and after["1"] == before["1"]
    # The new worker 0 loads the model from the registry and takes connections again.
    until(
        lambda: (
            every_predict_succeeds(supervised)
            and bool(supervised.metrics("ortserve_request_duration_seconds_count", model=MODEL).get("0"))
        ),
        "the restarted worker to serve",
    )
    assert '"event": "worker_exited"' in supervised.process.output()
    assert '"exit_code": -9' in supervised.process.output()


def test_a_second_server_on_the_port_refuses_to_start(supervised: Supervised) -> None:
    port = supervised.process.address.rsplit(":", 1)[1]
    for workers in ("2", "1"):
        command = [sys.executable, "-m", "ortserve", "serve", "--port", port, "--metrics-port", "0"]
        command += ["--workers", workers, "--data-dir", str(supervised.workdir / f"second-{workers}")]
        done = subprocess.run(command, check=False, capture_output=True, text=True, timeout=60)
        assert done.returncode == 2, (workers, done.stderr[-3000:])
        assert f"cannot listen on 127.0.0.1:{port}" in done.stderr, done.stderr[-3000:]
    on_fresh_connections(supervised, predict)


def test_sigterm_drains_every_worker_and_exits_zero(supervised: Supervised) -> None:
    pids = supervised.pids()
    assert supervised.process.stop() == 0, supervised.process.output()
    for pid in pids.values():
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


@pytest.mark.postgres
def test_on_postgresql_workers_converge_by_notify(tmp_path: Path, pg_url: str) -> None:
    """Polling every minute: only LISTEN/NOTIFY can bring the registration to the other worker in time."""
    metrics_port = free_port()
    with pytest.MonkeyPatch.context() as env:
        env.setenv("ORTSERVE_POLL_INTERVAL_S", "60")
        args = ("--workers", "2", "--metrics-port", str(metrics_port), "--db", pg_url)
        process = start_server(tmp_path, "supervisor", *args, "--data-dir", str(tmp_path / "data"))
    supervised = Supervised(process, metrics_port, tmp_path)
    try:
        path = tmp_path / "linear.onnx"
        onnx_models.linear(path)
        conn = fresh(supervised)
        try:
            register(conn, path, MODEL)
        finally:
            conn.close()
        until(lambda: every_predict_succeeds(supervised), f"every worker to serve {MODEL}")
        served = supervised.metrics("ortserve_request_duration_seconds_count", model=MODEL)
        assert set(served) == set(WORKERS), served
    finally:
        assert process.stop() == 0, process.output()
