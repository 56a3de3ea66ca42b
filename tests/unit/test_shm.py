"""The shared memory region registry over real files in a temporary directory (standing in for /dev/shm)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from ortserve.api.inference import grpc_service_pb2 as pb
from ortserve.errors import AlreadyExists, InvalidInput, NotFound, ResourceExhausted
from ortserve.scheduler.shm import SharedMemoryRegistry
from ortserve.server import oip_convert


@pytest.fixture
def shm_dir(tmp_path: Path) -> Path:
    (tmp_path / "obj").write_bytes(np.arange(16, dtype=np.float32).tobytes())
    return tmp_path


def test_reads_are_copies_bounded_by_the_region(shm_dir: Path) -> None:
    registry = SharedMemoryRegistry(str(shm_dir))
    region = registry.register("", "r", "/obj", 16, 32)
    view = region.read(0, 32, "input 'x'")
    assert np.frombuffer(view, np.float32).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    assert view.readonly
    (shm_dir / "obj").write_bytes(bytes(64))  # the caller's next input does not change this one
    assert np.frombuffer(view, np.float32).tolist() == [4, 5, 6, 7, 8, 9, 10, 11]
    with pytest.raises(InvalidInput, match="offset 8 \\+ byte size 32 is outside shared memory region 'r'"):
        region.read(8, 32, "input 'x'")
    region.write(28, 4, np.float32(99).tobytes(), "output 'y'")
    assert np.frombuffer((shm_dir / "obj").read_bytes(), np.float32)[11] == 99
    with pytest.raises(
        InvalidInput, match="output 'y' is 8 bytes but its shared memory region 'r' gives it 4"
    ):
        region.write(0, 4, bytes(8), "output 'y'")


def test_register_refuses_bad_keys_sizes_and_duplicates(shm_dir: Path) -> None:
    registry = SharedMemoryRegistry(str(shm_dir))
    (shm_dir / "dir").mkdir()
    (shm_dir / "link").symlink_to(shm_dir / "obj")
    for key, message in {
        "obj": "POSIX shared memory name",
        "/x/obj": "POSIX shared memory name",
        "/.": "POSIX shared memory name",
        "/nope": "does not exist",
        "/link": "is a symbolic link",
        "/dir": "is not a shared memory object",
    }.items():
        with pytest.raises(InvalidInput, match=message):
            registry.register("", "r", key, 0, 8)
    with pytest.raises(InvalidInput, match="past the end of the object \\(64 bytes\\)"):
        registry.register("", "r", "/obj", 60, 8)
    with pytest.raises(InvalidInput, match="byte_size must be positive"):
        registry.register("", "r", "/obj", 0, 0)
    registry.register("", "r", "/obj", 0, 64)
    with pytest.raises(AlreadyExists):
        registry.register("", "r", "/obj", 0, 64)
    registry.register("other", "r", "/obj", 0, 64)  # another owner's namespace


def test_unregister_keeps_arrays_in_flight_valid_and_forgets_the_name(shm_dir: Path) -> None:
    registry = SharedMemoryRegistry(str(shm_dir))
    region = registry.register("a", "r", "/obj", 0, 64)
    in_flight = np.frombuffer(region.read(0, 16, "x"), np.float32)
    registry.unregister("a", "r")
    assert in_flight.tolist() == [0, 1, 2, 3]  # a copy: closing the region does not touch it
    with pytest.raises(InvalidInput, match="shared memory region 'r' was unregistered"):
        region.write(0, 16, bytes(16), "output 'y'")  # a request resolved before the unregister
    with pytest.raises(InvalidInput, match="shared memory region 'r' is not registered"):
        registry.region("a", "r")
    with pytest.raises(NotFound):
        registry.status("a", "r")
    registry.unregister("a", "r")  # unknown: no error
    registry.register("a", "r1", "/obj", 0, 8)
    registry.register("a", "r2", "/obj", 8, 8)
    registry.register("b", "r3", "/obj", 0, 8)
    registry.unregister("a")
    assert registry.status("a") == []
    assert [r.name for r in registry.status("b")] == ["r3"]


def test_a_truncated_object_is_refused_naming_the_region(shm_dir: Path) -> None:
    registry = SharedMemoryRegistry(str(shm_dir))
    region = registry.register("", "r", "/obj", 0, 64)
    os.truncate(shm_dir / "obj", 16)
    shrunk = "x: the object '/obj' of shared memory region 'r' has 16 bytes but 32 are needed"
    with pytest.raises(InvalidInput, match=shrunk):
        region.read(0, 32, "x")
    assert bytes(region.read(0, 16, "x")) == np.arange(4, dtype=np.float32).tobytes()
    with pytest.raises(
        InvalidInput, match="y: the object '/obj' of shared memory region 'r' has 16 bytes but 48"
    ):
        region.write(32, 16, bytes(16), "y")
    assert (shm_dir / "obj").stat().st_size == 16  # a refused write does not extend the object


def test_a_read_larger_than_one_request_may_send_is_refused_before_copying(shm_dir: Path) -> None:
    region = SharedMemoryRegistry(str(shm_dir), max_read_bytes=32).register("", "r", "/obj", 0, 64)
    with pytest.raises(ResourceExhausted, match="x: 64 bytes from shared memory region 'r' are more than"):
        region.read(0, 64, "x")
    assert len(region.read(0, 32, "x")) == 32


def test_oip_parameters_need_a_region_name_and_a_byte_size(shm_dir: Path) -> None:
    registry = SharedMemoryRegistry(str(shm_dir))
    registry.register("", "r", "/obj", 0, 64)
    request = pb.ModelInferRequest(model_name="m")
    x = request.inputs.add(name="x", datatype="FP32", shape=[4])
    x.parameters["shared_memory_region"].string_param = "r"

    def call() -> object:
        return oip_convert.predict_call(request, None, lambda name: registry.region("", name))

    with pytest.raises(InvalidInput, match="needs the parameter 'shared_memory_byte_size'"):
        call()
    x.parameters["shared_memory_byte_size"].string_param = "16"
    with pytest.raises(InvalidInput, match="'shared_memory_byte_size' must be an int64 or uint64"):
        call()
    x.parameters["shared_memory_byte_size"].int64_param = 16
    x.parameters["shared_memory_offset"].int64_param = 16
    feeds = call().feeds  # type: ignore[attr-defined]
    assert feeds["x"].tolist() == [4, 5, 6, 7]
    x.parameters["shared_memory_byte_size"].int64_param = 12
    with pytest.raises(InvalidInput, match="in shared memory region 'r'"):
        call()
