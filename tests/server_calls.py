"""Blocking calls to a server process (tests/integration/processes.py): connect, register in chunks,
predict, and read versions and aliases; of the model `MODEL` unless told otherwise. `upload` awaits a
RegisterModel made over a blocking channel, for asyncio tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.client.bridge import awaited
from ortserve.client.client import to_tensor
from ortserve.store import hash_file
from tests.integration.processes import ServerProcess

MODEL = "durable"
CHUNK = 1 << 20
WAIT_S = 30.0
X = np.ones((1, 16), np.float32)  # an input of tests.onnx_models.linear's default size


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


def manifest(path: Path, name: str = MODEL) -> rpb.RegisterModelRequest:
    size, sha256 = hash_file(path)
    return rpb.RegisterModelRequest(
        manifest=rpb.RegisterManifest(name=name, size_bytes=size, sha256=sha256, load=True)
    )


def chunks(path: Path) -> Iterator[rpb.RegisterModelRequest]:
    with path.open("rb") as file:
        while chunk := file.read(CHUNK):
            yield rpb.RegisterModelRequest(chunk=chunk)


def register(conn: Connection, path: Path, name: str = MODEL) -> mpb.ModelVersion:
    response = conn.registry.RegisterModel(iter([manifest(path, name), *chunks(path)]), timeout=60)
    return response.version


async def upload(
    address: str, messages: Iterable[rpb.RegisterModelRequest], deadline_s: float = 60
) -> rpb.RegisterModelResponse:
    """RegisterModel with `messages`, sent over a blocking channel and awaited; failures raise AioRpcError.

    Tests whose server refuses an upload part way use this, not an asyncio stub: grpc.aio's client
    replaces the server's status with INTERNAL "Internal error from Core" when the server ends the
    call while a message is being written (grpc/grpc#36066). `messages` run on gRPC's request thread.
    """
    with grpc.insecure_channel(address) as channel:
        call = rpb_grpc.RegistryServiceStub(channel).RegisterModel.future(iter(messages), timeout=deadline_s)
        return await awaited(call)  # type: ignore[no-any-return]


def predict(conn: Connection, version: str = "", name: str = MODEL) -> ipb.PredictResponse:
    request = ipb.PredictRequest(model=name, version=version, inputs=[to_tensor("x", X)])
    return conn.inference.Predict(request, timeout=10)


def versions(conn: Connection, name: str = MODEL) -> list[tuple[int, int]]:
    listed = conn.registry.ListModelVersions(rpb.ListModelVersionsRequest(name=name), timeout=10).versions
    return [(v.version, v.state) for v in listed]


def aliases(conn: Connection, name: str = MODEL) -> dict[str, int]:
    model = conn.registry.GetModel(rpb.GetModelRequest(name=name), timeout=10).model
    return {a.name: a.version for a in model.aliases}


def production(conn: Connection, name: str = MODEL) -> int:
    return aliases(conn, name)["production"]


def wait_for_upload_bytes(store_tmp: Path, at_least: int, process: ServerProcess) -> None:
    """Until the server's temp upload file holds `at_least` bytes (it is mid-stream)."""
    deadline = time.monotonic() + WAIT_S
    while time.monotonic() < deadline:
        sizes = [p.stat().st_size for p in store_tmp.glob("upload-*.part")]
        if sizes and max(sizes) >= at_least:
            return
        time.sleep(0.02)
    raise AssertionError(f"the upload never reached {at_least} bytes on the server\n{process.output()}")


@dataclass
class HeldUpload:
    """A RegisterModel in flight that has sent part of the model and holds the rest back."""

    call: grpc.Future
    release: threading.Event


def start_held_upload(conn: Connection, path: Path, sent_chunks: int, name: str = MODEL) -> HeldUpload:
    """Send the manifest and the first `sent_chunks` chunks of `path`, then wait for `release` and
    end the request stream unfinished (the server then sees an incomplete upload)."""
    release = threading.Event()

    def requests() -> Iterator[rpb.RegisterModelRequest]:
        yield manifest(path, name)
        for i, request in enumerate(chunks(path)):
            if i == sent_chunks:
                release.wait(WAIT_S)
                return
            yield request

    return HeldUpload(conn.registry.RegisterModel.future(requests(), timeout=WAIT_S), release)
