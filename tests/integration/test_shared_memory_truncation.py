"""A client that truncates its shared memory object under the server: the server answers
INVALID_ARGUMENT naming the region and keeps serving. The server runs as its own process, so that
a server that faulted (SIGBUS on a mapping past the end of its object) fails these tests instead of
killing pytest."""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from multiprocessing import shared_memory

import grpc
import numpy as np
import pytest

from ortserve.api.inference import grpc_service_pb2 as pb
from ortserve.api.inference import grpc_service_pb2_grpc as pb_grpc
from tests import onnx_models
from tests.integration.processes import ServerProcess, start_server
from tests.server_calls import connect, register

WIDTH = 4096  # 16 KiB per FP32 row: a request touches several pages of the region
A = np.arange(WIDTH, dtype=np.float32).reshape(1, WIDTH)
B = np.full((1, WIDTH), 0.5, np.float32)
SIZE = 2 * A.nbytes  # a at 0, z written after it
REQUESTS = 200
IN_FLIGHT = 8
TOGGLES = 1_000_000  # bound of the truncating loop; it stops when the requests are done


@dataclass
class Server:
    process: ServerProcess
    oip: pb_grpc.GRPCInferenceServiceStub

    def alive(self) -> None:
        assert self.process.proc.poll() is None, (
            f"the server died with exit code {self.process.proc.returncode}:\n{self.process.output()}"
        )


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    workdir = tmp_path_factory.mktemp("shm-truncation")
    process = start_server(workdir, "server", "--data-dir", str(workdir / "data"))
    try:
        conn = connect(process)
        path = workdir / "add.onnx"
        onnx_models.add(path, width=WIDTH)
        register(conn, path, "add")
        yield Server(process, pb_grpc.GRPCInferenceServiceStub(conn.channel))
        conn.close()
    finally:
        process.stop()


@pytest.fixture
def segment(server: Server) -> Iterator[tuple[str, int]]:
    """A region 'r' over a new object holding A; yields its key and a descriptor of our own."""
    shm = shared_memory.SharedMemory(name=f"ortserve-test-{uuid.uuid4().hex[:12]}", create=True, size=SIZE)
    key = "/" + shm.name.lstrip("/")
    np.ndarray(A.shape, A.dtype, buffer=shm.buf)[...] = A
    fd = os.open(f"/dev/shm/{key[1:]}", os.O_RDWR)
    server.oip.SystemSharedMemoryRegister(
        pb.SystemSharedMemoryRegisterRequest(name="r", key=key, offset=0, byte_size=SIZE), timeout=10
    )
    try:
        yield key, fd
    finally:
        server.oip.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="r"), timeout=10)
        os.close(fd)
        shm.close()
        shm.unlink()


def infer(a_in_region: bool, z_in_region: bool) -> pb.ModelInferRequest:
    """add(a, b): a from region 'r' or raw, b raw, z into region 'r' after a or raw."""
    request = pb.ModelInferRequest(model_name="add")
    a = request.inputs.add(name="a", datatype="FP32", shape=A.shape)
    request.inputs.add(name="b", datatype="FP32", shape=B.shape)
    if a_in_region:
        a.parameters["shared_memory_region"].string_param = "r"
        a.parameters["shared_memory_byte_size"].int64_param = A.nbytes
        request.raw_input_contents.append(B.tobytes())
    else:
        request.raw_input_contents.extend([A.tobytes(), B.tobytes()])
    if z_in_region:
        z = request.outputs.add(name="z")
        z.parameters["shared_memory_region"].string_param = "r"
        z.parameters["shared_memory_offset"].int64_param = A.nbytes
        z.parameters["shared_memory_byte_size"].int64_param = A.nbytes
    return request


def refused(server: Server, request: pb.ModelInferRequest) -> str:
    with pytest.raises(grpc.RpcError) as info:
        server.oip.ModelInfer(request, timeout=10)
    server.alive()
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT, info.value.details()
    return info.value.details() or ""


def test_a_truncated_region_is_refused_naming_it_and_the_server_serves_on(
    server: Server, segment: tuple[str, int]
) -> None:
    key, fd = segment
    os.ftruncate(fd, 0)
    shrunk = f"the object {key!r} of shared memory region 'r' has 0 bytes but {A.nbytes} are needed"
    assert shrunk in refused(server, infer(a_in_region=True, z_in_region=False))
    shrunk = f"the object {key!r} of shared memory region 'r' has 0 bytes but {SIZE} are needed"
    assert shrunk in refused(server, infer(a_in_region=False, z_in_region=True))

    os.ftruncate(fd, SIZE)
    os.pwrite(fd, A.tobytes(), 0)
    response = server.oip.ModelInfer(infer(a_in_region=True, z_in_region=True), timeout=10)
    z = np.frombuffer(os.pread(fd, A.nbytes, A.nbytes), np.float32).reshape(A.shape)
    np.testing.assert_array_equal(z, A + B)
    assert response.outputs[0].parameters["shared_memory_region"].string_param == "r"
    server.alive()


def test_truncation_racing_requests_never_kills_the_server(server: Server, segment: tuple[str, int]) -> None:
    _, fd = segment
    done = threading.Event()

    def toggle() -> int:
        for i in range(TOGGLES):
            if done.is_set():
                return i
            os.ftruncate(fd, 0 if i % 2 == 0 else SIZE)
        return TOGGLES

    def one(i: int) -> grpc.StatusCode:
        try:
            server.oip.ModelInfer(infer(a_in_region=True, z_in_region=i % 2 == 0), timeout=30)
        except grpc.RpcError as exc:
            server.alive()
            assert exc.code() == grpc.StatusCode.INVALID_ARGUMENT, (exc.code(), exc.details())
            assert "shared memory region 'r'" in (exc.details() or ""), exc.details()
            return exc.code()  # type: ignore[no-any-return]
        return grpc.StatusCode.OK

    with ThreadPoolExecutor(IN_FLIGHT + 1) as executor:
        toggles = executor.submit(toggle)
        try:
            codes = list(executor.map(one, range(REQUESTS)))
        finally:
            done.set()
        assert toggles.result() > 0
    server.alive()
    assert set(codes) <= {grpc.StatusCode.OK, grpc.StatusCode.INVALID_ARGUMENT}
    assert grpc.StatusCode.INVALID_ARGUMENT in codes  # the truncation did hit requests

    os.ftruncate(fd, SIZE)
    os.pwrite(fd, A.tobytes(), 0)
    server.oip.ModelInfer(infer(a_in_region=True, z_in_region=True), timeout=10)
    z = np.frombuffer(os.pread(fd, A.nbytes, A.nbytes), np.float32).reshape(A.shape)
    np.testing.assert_array_equal(z, A + B)
    server.alive()
