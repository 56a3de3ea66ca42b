"""A server whose model store is s3://, end to end against a real S3-protocol server on loopback:
registration (one PUT and multipart), a second replica filling its blob cache from the store, a
corrupt blob failing its version by digest, the store killed mid-registration (UNAVAILABLE naming
the store while inference goes on), and `ortserve db gc` on the bucket."""

from __future__ import annotations

import hashlib
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import inference_service_pb2_grpc as ipb_grpc
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import registry_service_pb2_grpc as rpb_grpc
from ortserve.cli import main
from ortserve.client.client import from_tensor, to_tensor
from ortserve.config import MiB, ServerConfig
from ortserve.registry.db import make_engine, upgrade
from ortserve.registry.service import Registry
from ortserve.server.app import OrtServer
from ortserve.store import hash_file, open_store
from tests import onnx_models
from tests.registry_workers import validate_in_process
from tests.server_calls import CHUNK, chunks, manifest, upload
from tests.store.conftest import S3Server, new_bucket, start_s3_server

PREFIX = "ortserve"
BIG_IN, BIG_OUT = 2048, 1152  # a 9 MiB weight: more than one 8 MiB part
WAIT_S = 30.0


@dataclass
class Calls:
    address: str
    inference: ipb_grpc.InferenceServiceStub
    registry: rpb_grpc.RegistryServiceStub


def s3_config(tmp_path: Path, replica: str, endpoint: str, bucket: str) -> ServerConfig:
    """A replica with its own data dir (and blob cache), sharing the registry and the bucket."""
    return ServerConfig(
        port=0,
        metrics_port=0,
        data_dir=str(tmp_path / replica),
        db=f"sqlite:///{tmp_path / 'registry.db'}",
        store_url=f"s3://{bucket}/{PREFIX}",
        s3_endpoint_url=endpoint,
        max_message_bytes=16 * MiB,
    )


@asynccontextmanager
async def serving(config: ServerConfig) -> AsyncIterator[Calls]:
    server = OrtServer(config)
    port = await server.start()
    address = f"127.0.0.1:{port}"
    channel = aio.insecure_channel(address)
    try:
        yield Calls(address, ipb_grpc.InferenceServiceStub(channel), rpb_grpc.RegistryServiceStub(channel))
    finally:
        await channel.close()
        await server.stop(0)


async def register(calls: Calls, path: Path, name: str) -> mpb.ModelVersion:
    return (await upload(calls.address, [manifest(path, name), *chunks(path)])).version


async def predict(calls: Calls, name: str, width: int, version: str = "") -> np.ndarray:
    x = np.linspace(-1, 1, width, dtype=np.float32).reshape(1, width)
    request = ipb.PredictRequest(model=name, version=version, inputs=[to_tensor("x", x)])
    response = await calls.inference.Predict(request, timeout=WAIT_S)
    return from_tensor(response.outputs[0])


def models(tmp_path: Path) -> dict[str, Path]:
    paths = {"small": tmp_path / "small.onnx", "big": tmp_path / "big.onnx"}
    onnx_models.linear(paths["small"], seed=1)
    onnx_models.linear(paths["big"], n_in=BIG_IN, n_out=BIG_OUT, seed=2)
    assert paths["big"].stat().st_size > 8 * MiB
    return paths


def key(bucket: str, path: Path) -> str:
    return f"{PREFIX}/blobs/{hash_file(path)[1]}"


def stored(server: S3Server, bucket: str) -> list[str]:
    return sorted(o["Key"] for o in server.client().list_objects_v2(Bucket=bucket).get("Contents", []))


async def test_replicas_on_s3_register_fill_their_caches_and_never_serve_a_corrupt_blob(
    s3_server: S3Server, bucket: str, tmp_path: Path
) -> None:
    paths = models(tmp_path)
    config_a = s3_config(tmp_path, "a", s3_server.endpoint, bucket)
    async with serving(config_a) as a:
        for name in ("small", "big"):
            assert (await register(a, paths[name], name)).state == mpb.VERSION_STATE_READY
        served = {"small": await predict(a, "small", 16), "big": await predict(a, "big", BIG_IN)}
    assert stored(s3_server, bucket) == sorted(key(bucket, p) for p in paths.values())

    config_b = s3_config(tmp_path, "b", s3_server.endpoint, bucket)
    cache_b = Path(config_b.data_dir) / "blob-cache" / "sha256"
    async with serving(config_b) as b:  # an empty cache: both blobs come from the store
        for name, width in (("small", 16), ("big", BIG_IN)):
            np.testing.assert_array_equal(await predict(b, name, width), served[name])
    assert sorted(p.stem for p in cache_b.rglob("*.onnx")) == sorted(hash_file(p)[1] for p in paths.values())

    sha = hash_file(paths["small"])[1]
    s3_server.client().put_object(Bucket=bucket, Key=key(bucket, paths["small"]), Body=b"tampered bytes")
    actual = hashlib.sha256(b"tampered bytes").hexdigest()
    config_c = s3_config(tmp_path, "c", s3_server.endpoint, bucket)
    async with serving(config_c) as c:
        np.testing.assert_array_equal(await predict(c, "big", BIG_IN), served["big"])
        with pytest.raises(aio.AioRpcError) as info:
            await predict(c, "small", 16, version="1")
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        expected = f"blob sha256 {sha} in the model store s3://{bucket}/{PREFIX} hashes to {actual}"
        assert expected in (info.value.details() or ""), info.value.details()
        shown = await c.registry.GetModelVersion(rpb.GetModelVersionRequest(name="small", version=1))
        assert shown.version.state == mpb.VERSION_STATE_FAILED and expected in shown.version.error
    assert not (Path(config_c.data_dir) / "blob-cache" / "sha256" / sha[:2] / f"{sha}.onnx").exists()


def spooled(folder: Path) -> int:
    """The most bytes any upload in flight has in the server's spool folder."""
    return max((p.stat().st_size for p in folder.glob("upload-*.part")), default=0)


def wait_for_spool(folder: Path, at_least: int) -> None:
    """Until the server's spool file of the upload in flight holds `at_least` bytes (blocks: it runs
    on gRPC's request thread, between two messages of the upload)."""
    deadline = time.monotonic() + WAIT_S
    while spooled(folder) < at_least:
        assert time.monotonic() < deadline, f"the upload never reached {at_least} bytes on the server"
        time.sleep(0.02)


async def test_the_store_killed_during_a_registration_is_unavailable_and_inference_goes_on(
    s3_env: None, tmp_path: Path
) -> None:
    paths = models(tmp_path)
    s3 = start_s3_server(tmp_path)
    try:
        bucket = new_bucket(s3)
        config = s3_config(tmp_path, "a", s3.endpoint, bucket)
        spool = Path(config.data_dir) / "blob-cache" / "tmp"
        async with serving(config) as calls:
            assert (await register(calls, paths["small"], "small")).state == mpb.VERSION_STATE_READY
            before = await predict(calls, "small", 16)

            def requests() -> Iterator[rpb.RegisterModelRequest]:
                yield manifest(paths["big"], "big")
                for i, chunk in enumerate(chunks(paths["big"])):
                    if i == 3:  # the multipart upload is open and three chunks are spooled
                        wait_for_spool(spool, 3 * CHUNK)
                        s3.stop()
                    yield chunk

            with pytest.raises(aio.AioRpcError) as info:
                await upload(calls.address, requests())
            _unavailable_naming_the_store(
                info.value, f"s3://{bucket}/{PREFIX} is unreachable while uploading part 1"
            )
            np.testing.assert_array_equal(await predict(calls, "small", 16), before)

            with pytest.raises(aio.AioRpcError) as info:  # a model of one part fails at its PUT
                await register(calls, paths["small"], "again")
            _unavailable_naming_the_store(
                info.value, f"s3://{bucket}/{PREFIX} is unreachable while storing the model"
            )
            np.testing.assert_array_equal(await predict(calls, "small", 16), before)
            listed = await calls.registry.ListModels(rpb.ListModelsRequest())
            assert [m.name for m in listed.models] == ["small"]
            assert list(spool.iterdir()) == []
    finally:
        s3.stop()


def _unavailable_naming_the_store(error: aio.AioRpcError, text: str) -> None:
    details = error.details() or ""
    assert error.code() == grpc.StatusCode.UNAVAILABLE, details
    assert details.startswith(f"the model store {text}; retry later (correlation id "), details
    assert not any(word in details for word in ("http", "127.0.0.1", "botocore", "Errno", "onnect")), details


def test_db_gc_removes_unreferenced_blobs_from_the_bucket(
    s3_server: S3Server,
    bucket: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    paths = models(tmp_path)
    data = tmp_path / "data"
    monkeypatch.setenv("ORTSERVE_STORE_URL", f"s3://{bucket}/{PREFIX}")
    monkeypatch.setenv("ORTSERVE_S3_ENDPOINT_URL", s3_server.endpoint)
    config = ServerConfig(
        data_dir=str(data), store_url=f"s3://{bucket}/{PREFIX}", s3_endpoint_url=s3_server.endpoint
    )
    data.mkdir()
    engine = make_engine(config.db_url)
    upgrade(engine)
    store = open_store(config)
    Registry(engine, store, max_model_bytes=1 << 30, validate=validate_in_process).register_file(
        paths["small"], "small"
    )
    engine.dispose()
    size, sha = hash_file(paths["big"])
    orphan = store.open_upload(expected_size=size, expected_sha256=sha)  # stored, then its registration died
    orphan.write(paths["big"].read_bytes())
    orphan.commit()
    assert stored(s3_server, bucket) == sorted(key(bucket, p) for p in paths.values())

    def gc(*flags: str) -> list[str]:
        capsys.readouterr()
        assert main(["db", "gc", "--data-dir", str(data), *flags]) == 0
        return capsys.readouterr().out.splitlines()

    assert gc() == ["removed 0 file(s), 0 bytes freed"]  # younger than the hour's grace
    line = f"s3://{bucket}/{key(bucket, paths['big'])} ({size} bytes)"
    assert gc("--grace", "0", "--dry-run") == [
        f"would remove {line}",
        f"would remove 1 file(s), {size} bytes (dry run)",
    ]
    assert gc("--grace", "0") == [f"removed {line}", f"removed 1 file(s), {size} bytes freed"]
    assert stored(s3_server, bucket) == [key(bucket, paths["small"])]
    assert gc("--grace", "0") == ["removed 0 file(s), 0 bytes freed"]
