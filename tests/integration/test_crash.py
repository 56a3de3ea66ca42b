"""`kill -9` of a server mid-registration leaves no half-visible version; after a restart every
version that was READY serves again, aliases hold, and version numbers carry on."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.client import to_tensor
from ortserve.registry.store import hash_file
from tests import onnx_models
from tests.integration.processes import ServerProcess, start_server

MODEL = "durable"
CHUNK = 1 << 20
WAIT_S = 30.0
# linear(n_in=2048, n_out=1024): an 8 MiB float32 weight, so the upload takes 8+ chunks.
BIG_IN, BIG_OUT = 2048, 1024
CHUNKS_BEFORE_KILL = 3
X = np.ones((1, 16), np.float32)


@dataclass
class Connection:
    channel: grpc.Channel
    inference: ipb_grpc.InferenceServiceStub
    registry: rpb_grpc.RegistryServiceStub

    def close(self) -> None:
        self.channel.close()


def connect(process: ServerProcess) -> Connection:
    options = [("grpc.max_send_message_length", 64 * CHUNK), ("grpc.max_receive_message_length", 64 * CHUNK)]
    channel = grpc.insecure_channel(process.address, options=options)
    grpc.channel_ready_future(channel).result(timeout=10)
    return Connection(channel, ipb_grpc.InferenceServiceStub(channel), rpb_grpc.RegistryServiceStub(channel))


def manifest(path: Path) -> rpb.RegisterModelRequest:
    size, sha256 = hash_file(path)
    return rpb.RegisterModelRequest(
        manifest=rpb.RegisterManifest(name=MODEL, size_bytes=size, sha256=sha256, load=True)
    )


def chunks(path: Path) -> Iterator[rpb.RegisterModelRequest]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield rpb.RegisterModelRequest(chunk=chunk)


def register(conn: Connection, path: Path) -> mpb.ModelVersion:
    response = conn.registry.RegisterModel(iter([manifest(path), *chunks(path)]), timeout=60)
    return response.version


def predict(conn: Connection, version: str = "") -> ipb.PredictResponse:
    request = ipb.PredictRequest(model=MODEL, version=version, inputs=[to_tensor("x", X)])
    return conn.inference.Predict(request, timeout=10)


def versions(conn: Connection) -> list[tuple[int, int]]:
    listed = conn.registry.ListModelVersions(rpb.ListModelVersionsRequest(name=MODEL), timeout=10).versions
    return [(v.version, v.state) for v in listed]


def production(conn: Connection) -> int:
    model = conn.registry.GetModel(rpb.GetModelRequest(name=MODEL), timeout=10).model
    return {a.name: a.version for a in model.aliases}["production"]


def wait_for_upload_bytes(store_tmp: Path, at_least: int, process: ServerProcess) -> None:
    """Until the server's temp upload file holds `at_least` bytes (it is mid-stream)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in store_tmp.glob("upload-*.part")]
        if sizes and max(sizes) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"the upload never reached {at_least} bytes on the server\n{process.output()}")


def test_kill_9_mid_registration_leaves_no_version_and_ready_ones_serve_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    small = [tmp_path / "v1.onnx", tmp_path / "next.onnx"]
    onnx_models.linear(small[0], seed=1)
    onnx_models.linear(small[1], seed=2)
    big = tmp_path / "big.onnx"
    onnx_models.linear(big, n_in=BIG_IN, n_out=BIG_OUT, seed=3)
    big_size, big_sha = hash_file(big)
    assert big_size > (CHUNKS_BEFORE_KILL + 4) * CHUNK

    server = start_server(tmp_path, "first", "--data-dir", str(data))
    conn = connect(server)
    try:
        assert register(conn, small[0]).state == mpb.VERSION_STATE_READY
        conn.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=1), timeout=30)
        before = predict(conn).outputs

        # The manifest and a few chunks, sent slowly; the rest is held back until the server is dead.
        release = threading.Event()

        def slow_upload() -> Iterator[rpb.RegisterModelRequest]:
            yield manifest(big)
            for i, request in enumerate(chunks(big)):
                if i == CHUNKS_BEFORE_KILL:
                    release.wait(WAIT_S)
                    return
                time.sleep(0.05)
                yield request

        call = conn.registry.RegisterModel.future(slow_upload(), timeout=WAIT_S)
        wait_for_upload_bytes(data / "store" / "tmp", CHUNKS_BEFORE_KILL * CHUNK, server)
        server.kill()
        release.set()
        error = call.exception(timeout=WAIT_S)
        assert isinstance(error, grpc.RpcError), f"the interrupted upload answered {call.result()}"
    finally:
        conn.close()
        server.kill()

    restarted = start_server(tmp_path, "second", "--data-dir", str(data))
    conn = connect(restarted)
    try:
        assert versions(conn) == [(1, mpb.VERSION_STATE_READY)]
        assert not (data / "store" / "sha256" / big_sha[:2] / f"{big_sha}.onnx").exists()
        assert production(conn) == 1
        answer = predict(conn)
        assert answer.model_version == 1 and answer.outputs == before

        added = register(conn, small[1])
        assert (added.version, added.state) == (2, mpb.VERSION_STATE_READY)
        assert predict(conn, "2").model_version == 2
        assert predict(conn).model_version == 1  # production still routes to version 1
        assert versions(conn) == [(1, mpb.VERSION_STATE_READY), (2, mpb.VERSION_STATE_READY)]
    finally:
        conn.close()
        restarted.stop()


def test_kill_9_right_after_a_registration_keeps_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    paths = [tmp_path / "v1.onnx", tmp_path / "v2.onnx"]
    onnx_models.linear(paths[0], seed=1)
    onnx_models.linear(paths[1], seed=2)

    server = start_server(tmp_path, "first", "--data-dir", str(data))
    conn = connect(server)
    try:
        assert register(conn, paths[0]).state == mpb.VERSION_STATE_READY
        conn.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=1), timeout=30)
        committed = register(conn, paths[1])
        assert (committed.version, committed.state) == (2, mpb.VERSION_STATE_READY)
        server.kill()
    finally:
        conn.close()
        server.kill()

    restarted = start_server(tmp_path, "second", "--data-dir", str(data))
    conn = connect(restarted)
    try:
        assert versions(conn) == [(1, mpb.VERSION_STATE_READY), (2, mpb.VERSION_STATE_READY)]
        shown = conn.registry.GetModelVersion(rpb.GetModelVersionRequest(name=MODEL, version=2), timeout=10)
        assert shown.version.sha256 == committed.sha256
        assert production(conn) == 1
        assert predict(conn).model_version == 1
        assert predict(conn, "2").model_version == 2
    finally:
        conn.close()
        restarted.stop()
