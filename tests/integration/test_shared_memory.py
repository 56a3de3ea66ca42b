"""System shared memory against a real server: OIP RPCs, our Predict, the SDK, bad keys and bounds,
unregister, per-caller isolation and closing at shutdown.

Regions are POSIX shared memory objects made here with multiprocessing.shared_memory (tritonclient's
own helpers are exercised in test_oip_tritonclient.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from multiprocessing import shared_memory
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.inference import grpc_service_pb2 as pb
from ortserve.api.inference import grpc_service_pb2_grpc as pb_grpc
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import tensor_pb2 as tpb
from ortserve.bench.loadgen import BenchOptions, run_bench
from ortserve.client import Client, SharedTensor
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models
from tests.integration.conftest import Running, expect_error

INVALID = grpc.StatusCode.INVALID_ARGUMENT
A = np.arange(8, dtype=np.float32).reshape(2, 4)
B = np.full((2, 4), 0.5, dtype=np.float32)


@pytest.fixture
def segment() -> Iterator[shared_memory.SharedMemory]:
    """A 256-byte POSIX shared memory object holding A then B; unlinked afterwards."""
    shm = shared_memory.SharedMemory(name=f"ortserve-test-{uuid.uuid4().hex[:12]}", create=True, size=256)
    np.ndarray(A.shape, A.dtype, buffer=shm.buf)[...] = A
    np.ndarray(B.shape, B.dtype, buffer=shm.buf, offset=A.nbytes)[...] = B
    try:
        yield shm
    finally:
        shm.close()
        shm.unlink()


def key_of(shm: shared_memory.SharedMemory) -> str:
    return "/" + shm.name.lstrip("/")


def register(
    name: str, key: str, byte_size: int = 256, offset: int = 0
) -> pb.SystemSharedMemoryRegisterRequest:
    return pb.SystemSharedMemoryRegisterRequest(name=name, key=key, offset=offset, byte_size=byte_size)


def shm_input(
    name: str, region: str, offset: int, byte_size: int, shape: tuple[int, ...] = (2, 4)
) -> tpb.Tensor:
    return tpb.Tensor(
        name=name,
        data_type=tpb.DATA_TYPE_FP32,
        shape=shape,
        shared_memory=tpb.SharedMemoryRef(region=region, offset=offset, byte_size=byte_size),
    )


def add_request(region: str = "r", a_size: int = A.nbytes) -> ipb.PredictRequest:
    return ipb.PredictRequest(
        model="add", inputs=[shm_input("a", region, 0, a_size), shm_input("b", region, A.nbytes, B.nbytes)]
    )


def oip_infer(
    region: str, offset: int, byte_size: int, out: tuple[str, int, int] | None = None
) -> pb.ModelInferRequest:
    """add(a, b): a from the region, b raw; z optionally into a region (name, offset, byte size)."""
    request = pb.ModelInferRequest(model_name="add", raw_input_contents=[B.tobytes()])
    a = request.inputs.add(name="a", datatype="FP32", shape=[2, 4])
    a.parameters["shared_memory_region"].string_param = region
    a.parameters["shared_memory_offset"].int64_param = offset
    a.parameters["shared_memory_byte_size"].int64_param = byte_size
    request.inputs.add(name="b", datatype="FP32", shape=[2, 4])
    if out is not None:
        z = request.outputs.add(name="z")
        z.parameters["shared_memory_region"].string_param = out[0]
        z.parameters["shared_memory_offset"].int64_param = out[1]
        z.parameters["shared_memory_byte_size"].int64_param = out[2]
    return request


def z_of(response: ipb.PredictResponse) -> np.ndarray:
    (z,) = response.outputs
    return np.frombuffer(z.raw_data, np.float32).reshape(tuple(z.shape))


async def test_register_infer_through_both_apis_and_unregister(
    running: Running, segment: shared_memory.SharedMemory
) -> None:
    oip = pb_grpc.GRPCInferenceServiceStub(running.channel)
    await oip.SystemSharedMemoryRegister(register("r", key_of(segment)))
    status = await oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())
    assert dict(status.regions) == {
        "r": pb.SystemSharedMemoryStatusResponse.RegionStatus(
            name="r", key=key_of(segment), offset=0, byte_size=256
        )
    }
    np.testing.assert_array_equal(z_of(await running.inference.Predict(add_request())), A + B)

    # OIP: a from the region, b raw, z written into the region after A and B
    out = A.nbytes + B.nbytes
    response = await oip.ModelInfer(oip_infer("r", 0, A.nbytes, ("r", out, 64)))
    assert len(response.raw_output_contents) == 0
    assert response.outputs[0].parameters["shared_memory_region"].string_param == "r"
    z = np.ndarray((2, 4), np.float32, buffer=segment.buf, offset=out).copy()
    np.testing.assert_array_equal(z, A + B)

    async def one() -> AsyncIterator[pb.ModelInferRequest]:
        yield oip_infer("r", 0, A.nbytes)

    (answer,) = [a async for a in oip.ModelStreamInfer(one())]
    assert not answer.error_message
    z = np.frombuffer(answer.infer_response.raw_output_contents[0], np.float32).reshape(2, 4)
    np.testing.assert_array_equal(z, A + B)

    await oip.SystemSharedMemoryUnregister(pb.SystemSharedMemoryUnregisterRequest(name="r"))
    await expect_error(
        running.inference.Predict(add_request()), INVALID, "shared memory region 'r' is not registered"
    )
    await expect_error(
        oip.ModelInfer(oip_infer("r", 0, A.nbytes)), INVALID, "shared memory region 'r' is not registered"
    )
    assert not (await oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())).regions
    await expect_error(
        oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest(name="r")),
        grpc.StatusCode.NOT_FOUND,
        "'r' is not registered",
    )


BAD_KEYS = {
    "../x": "must be a POSIX shared memory name",
    "/a/b": "must be a POSIX shared memory name",
    "x": "must be a POSIX shared memory name",
    "/..": "must be a POSIX shared memory name",
    "/ortserve-test-no-such-object": "does not exist",
}


async def test_a_bad_key_is_refused_naming_it(running: Running, segment: shared_memory.SharedMemory) -> None:
    oip = pb_grpc.GRPCInferenceServiceStub(running.channel)
    for key, message in BAD_KEYS.items():
        await expect_error(oip.SystemSharedMemoryRegister(register("bad", key)), INVALID, f"key {key!r}")
        await expect_error(oip.SystemSharedMemoryRegister(register("bad", key)), INVALID, message)
    outside = "/psm-not-ours"  # a valid name outside the server's key prefix: never opened
    await expect_error(
        oip.SystemSharedMemoryRegister(register("bad", outside)),
        grpc.StatusCode.PERMISSION_DENIED,
        "maps only keys starting with '/ortserve-' (its shared_memory_key_prefix setting)",
    )
    link = Path("/dev/shm") / f"ortserve-link-{uuid.uuid4().hex[:12]}"
    link.symlink_to(Path("/dev/shm") / segment.name.lstrip("/"))
    try:
        await expect_error(
            oip.SystemSharedMemoryRegister(register("l", "/" + link.name)), INVALID, "is a symbolic link"
        )
    finally:
        link.unlink()
    assert not (await oip.SystemSharedMemoryStatus(pb.SystemSharedMemoryStatusRequest())).regions
    await oip.SystemSharedMemoryRegister(register("r", key_of(segment)))  # a good one still works
    np.testing.assert_array_equal(z_of(await running.inference.Predict(add_request())), A + B)


async def test_bounds_are_checked_at_register_and_on_every_use(
    running: Running, segment: shared_memory.SharedMemory
) -> None:
    oip = pb_grpc.GRPCInferenceServiceStub(running.channel)
    key = key_of(segment)
    await expect_error(oip.SystemSharedMemoryRegister(register("r", key, 200, 100)), INVALID, "past the end")
    await expect_error(
        oip.SystemSharedMemoryRegister(register("r", key, 0)), INVALID, "byte_size must be positive"
    )
    await oip.SystemSharedMemoryRegister(register("r", key, 64))
    await expect_error(
        oip.SystemSharedMemoryRegister(register("r", key, 64)), grpc.StatusCode.ALREADY_EXISTS, "'r'"
    )
    # b at offset 32 + 32 bytes fits the 64-byte region; at 40 it does not
    await expect_error(oip.ModelInfer(oip_infer("r", 40, 32)), INVALID, "outside shared memory region 'r'")
    # the region holds 16 bytes where the input needs 32
    await expect_error(
        running.inference.Predict(add_request(a_size=16)), INVALID, "in shared memory region 'r'"
    )
    # the output does not fit its place
    await expect_error(oip.ModelInfer(oip_infer("r", 0, 32, ("r", 48, 16))), INVALID, "region 'r'")
    np.testing.assert_array_equal(z_of(await running.inference.Predict(add_request())), A + B)


async def test_a_shrunk_object_is_refused_and_an_unlinked_one_stays_usable(
    running: Running, segment: shared_memory.SharedMemory
) -> None:
    oip = pb_grpc.GRPCInferenceServiceStub(running.channel)
    other = shared_memory.SharedMemory(name=f"ortserve-test-{uuid.uuid4().hex[:12]}", create=True, size=64)
    np.ndarray((2, 4), np.float32, buffer=other.buf)[...] = A
    np.ndarray((2, 4), np.float32, buffer=other.buf, offset=32)[...] = B
    await oip.SystemSharedMemoryRegister(register("gone", key_of(other), 64))
    other.close()
    other.unlink()  # the server's open descriptor keeps the memory
    np.testing.assert_array_equal(z_of(await running.inference.Predict(add_request("gone"))), A + B)

    await oip.SystemSharedMemoryRegister(register("r", key_of(segment)))
    fd = os.open(f"/dev/shm/{segment.name.lstrip('/')}", os.O_RDWR)
    try:
        os.ftruncate(fd, 16)
        await expect_error(
            running.inference.Predict(add_request()),
            INVALID,
            "the object '" + key_of(segment) + "' of shared memory region 'r' has 16 bytes but 32",
        )
    finally:
        os.ftruncate(fd, 256)
        os.close(fd)


async def test_the_sdk_registers_and_predicts_from_a_region(
    running: Running, segment: shared_memory.SharedMemory
) -> None:
    def work() -> np.ndarray:
        with Client(running.address) as client:
            client.register_shared_memory("sdk", key_of(segment), 64)
            inputs = {
                "a": SharedTensor("sdk", (2, 4), np.float32),
                "b": SharedTensor("sdk", (2, 4), "float32", 32),
            }
            z = client.predict("add", inputs).outputs["z"]
            client.unregister_shared_memory("sdk")
            with pytest.raises(grpc.RpcError) as info:
                client.predict("add", inputs)
            assert info.value.code() == INVALID
            return z

    np.testing.assert_array_equal(await asyncio.to_thread(work), A + B)


READER, WRITER = "reader-secret", "writer-secret"


async def token_server(tmp_path: Path) -> OrtServer:
    digest = hashlib.sha256(WRITER.encode()).hexdigest()
    config = ServerConfig(
        port=0,
        metrics_port=0,
        data_dir=str(tmp_path / "data"),
        infer_tokens=(READER, f"writer:sha256:{digest}"),
    )
    server = OrtServer(config)
    model = tmp_path / "add.onnx"
    onnx_models.add(model)
    server.parts.control.registry.register_file(model, "add")
    await server.start()
    return server


async def test_regions_belong_to_the_caller_and_are_closed_at_shutdown(
    tmp_path: Path, segment: shared_memory.SharedMemory
) -> None:
    def as_(token: str) -> tuple[tuple[str, str]]:
        return (("authorization", f"Bearer {token}"),)

    server = await token_server(tmp_path)
    try:
        async with aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
            oip = pb_grpc.GRPCInferenceServiceStub(channel)
            await oip.SystemSharedMemoryRegister(register("r", key_of(segment)), metadata=as_(WRITER))
            status = pb.SystemSharedMemoryStatusRequest()
            assert not (await oip.SystemSharedMemoryStatus(status, metadata=as_(READER))).regions
            assert set((await oip.SystemSharedMemoryStatus(status, metadata=as_(WRITER))).regions) == {"r"}
            await expect_error(
                oip.ModelInfer(oip_infer("r", 0, A.nbytes), metadata=as_(READER)),
                INVALID,
                "shared memory region 'r' is not registered",
            )
            unregister_all = pb.SystemSharedMemoryUnregisterRequest()
            await oip.SystemSharedMemoryUnregister(unregister_all, metadata=as_(READER))
            response = await oip.ModelInfer(oip_infer("r", 0, A.nbytes), metadata=as_(WRITER))
            z = np.frombuffer(response.raw_output_contents[0], np.float32).reshape(2, 4)
            np.testing.assert_array_equal(z, A + B)
        (region,) = server.parts.core.shared_memory.status("writer")
    finally:
        await server.stop(0)
    assert region._fd == -1
    assert not server.parts.core.shared_memory.status("writer")


async def test_the_load_generator_sends_inputs_through_shared_memory(running: Running) -> None:
    options = BenchOptions(
        target=running.address,
        model="add",
        protocol="ortserve-shm",
        concurrency=2,
        requests=20,
        duration_s=None,
        warmup_s=0,
        batch_rows=64,  # two inputs of 1 KiB each
    )
    result = await run_bench(options)
    assert (result["requests"], result["errors"]) == (20, 0)
    assert result["request_bytes"] < 200  # the tensors' 2 KiB did not travel
    assert not running.server.parts.core.shared_memory.status("")  # unregistered at the end
