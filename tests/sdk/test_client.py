"""Every method of `Client` and `AsyncClient` against a real in-process server."""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto

from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.client import AsyncClient, Client, Prediction, StreamMessageError
from ortserve.client import aio as aio_module
from ortserve.client import client as client_module
from ortserve.client.bridge import awaited
from ortserve.server.app import OrtServer
from tests import onnx_models
from tests.sdk.conftest import make_server

DTYPES: dict[str, tuple[int, np.ndarray]] = {
    "bool": (TensorProto.BOOL, np.array([[True, False, True]])),
    "uint8": (TensorProto.UINT8, np.array([[0, 1, 255]], np.uint8)),
    "uint16": (TensorProto.UINT16, np.array([[0, 1, 65535]], np.uint16)),
    "uint32": (TensorProto.UINT32, np.array([[0, 1, 2**32 - 1]], np.uint32)),
    "uint64": (TensorProto.UINT64, np.array([[0, 1, 2**64 - 1]], np.uint64)),
    "int8": (TensorProto.INT8, np.array([[-128, 0, 127]], np.int8)),
    "int16": (TensorProto.INT16, np.array([[-(2**15), 0, 2**15 - 1]], np.int16)),
    "int32": (TensorProto.INT32, np.array([[-(2**31), 0, 2**31 - 1]], np.int32)),
    "int64": (TensorProto.INT64, np.array([[-(2**63), 0, 2**63 - 1]], np.int64)),
    "fp16": (TensorProto.FLOAT16, np.array([[-1.5, 0.0, 65504.0]], np.float16)),
    "fp32": (TensorProto.FLOAT, np.array([[-1.5, np.inf, 3.25]], np.float32)),
    "fp64": (TensorProto.DOUBLE, np.array([[-1.5, 1e300, np.nan]], np.float64)),
    "string": (TensorProto.STRING, np.array([["héllo", "", "wörld"]], dtype=object)),
}


def x_input(rows: int = 2, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((rows, 16)).astype(np.float32)


def reference(path: Path, x: np.ndarray) -> np.ndarray:
    return np.asarray(ort.InferenceSession(str(path)).run(None, {"x": x})[0])


def check_linear(result: Prediction, path: Path, x: np.ndarray) -> None:
    assert result.model == "linear" and result.version == 1
    assert result.provider == "CPUExecutionProvider" and result.batch_size >= 1
    assert result.queue_us >= 0 and result.compute_us > 0 and result.server_us >= result.compute_us
    np.testing.assert_allclose(result.outputs["y"], reference(path, x), rtol=1e-5)


# Sync client (its calls block, so they run in a thread while the server uses the event loop)


def sync_inference(address: str, linear: Path) -> None:
    x = x_input()
    with Client(address) as client:
        client.wait_ready(10)
        check_linear(client.predict("linear", {"x": x}), linear, x)
        check_linear(
            client.predict("linear", {"x": x}, version=1, routing_key="user-7", timeout=5), linear, x
        )
        pinned = client.predict("linear", {"x": x}, "1", outputs=["y"], priority=3)
        assert list(pinned.outputs) == ["y"]

        both = client.predict("add", {"a": np.ones((2, 4), np.float32), "b": np.full((2, 4), 2, np.float32)})
        np.testing.assert_array_equal(both.outputs["z"], np.full((2, 4), 3, np.float32))

        with pytest.raises(grpc.RpcError) as info:
            client.predict("nope", {"x": x})
        assert info.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]

        feeds: Iterator[dict[str, np.ndarray]] = ({"x": x_input(seed=i)} for i in range(5))
        answers = list(client.predict_stream("linear", feeds, timeout=30))
        assert len(answers) == 5
        for i, answer in enumerate(answers):
            check_linear(answer, linear, x_input(seed=i))

        sig = client.signature("linear")
        assert (sig.model, sig.version) == ("linear", 1)
        assert sig.inputs == [("x", "FP32", [-1, 16])] and sig.outputs == [("y", "FP32", [-1, 4])]
        assert sig.batch_axis


def sync_stream_error(address: str) -> None:
    good = {"x": x_input()}
    bad = {"x": np.zeros((2, 3), np.float32)}  # wrong width
    with Client(address) as client:
        stream = client.predict_stream("linear", [good, bad, good])
        assert next(stream).version == 1
        with pytest.raises(StreamMessageError) as info:
            next(stream)
        assert info.value.message_id == "1"
        assert info.value.status == grpc.StatusCode.INVALID_ARGUMENT
        stream.close()
        # The stream was cancelled; the channel is fine.
        assert client.predict("linear", good).version == 1


def sync_registry(address: str, tmp: Path) -> None:
    path = tmp / "linear2.onnx"
    onnx_models.linear(path, seed=5)
    progress: list[tuple[int, int]] = []
    with Client(address) as client:
        info = client.register(
            path,
            "linear",
            description="second",
            labels={"team": "sdk"},
            progress=lambda sent, total: progress.append((sent, total)),
        )
        size = path.stat().st_size
        assert progress and progress[-1] == (size, size)
        assert (info.model, info.version, info.state) == ("linear", 2, "ready")
        assert info.size_bytes == size and info.labels == {"team": "sdk"} and info.description == "second"
        assert info.create_time is not None

        assert client.predict("linear", {"x": x_input()}).version == 2  # the latest ready version
        assert client.predict("linear", {"x": x_input()}, version=1).version == 1

        models = client.list_models(page_size=1)  # two pages
        assert sorted(m.name for m in models) == ["add", "linear"]
        model = client.get_model("linear")
        assert [v.version for v in model.versions] == [1, 2]
        assert [v.version for v in client.list_versions("linear")] == [1, 2]
        assert client.get_version("linear", 2).sha256 == info.sha256

        client.unload("linear", 2)
        assert client.get_version("linear", 2).state != "ready"
        assert client.predict("linear", {"x": x_input()}).version == 1
        loaded = client.load("linear", 2)
        assert loaded.state == "ready" and loaded.providers == ["CPUExecutionProvider"]

        unloaded = client.register(
            path, "other", load=False, max_batch_size=4, providers=["CPUExecutionProvider"]
        )
        assert (unloaded.model, unloaded.version) == ("other", 1)
        with pytest.raises(grpc.RpcError) as info_err:
            client.get_model("missing")
        assert info_err.value.code() == grpc.StatusCode.NOT_FOUND  # type: ignore[attr-defined]


async def test_sync_inference(address: str, model_files: dict[str, Path]) -> None:
    await asyncio.to_thread(sync_inference, address, model_files["linear"])


async def test_sync_stream_in_band_error(address: str) -> None:
    await asyncio.to_thread(sync_stream_error, address)


class SourceFailed(Exception):
    pass


def failing_feeds(sets: int) -> Iterator[dict[str, np.ndarray]]:
    for i in range(sets):
        yield {"x": x_input(seed=i)}
    raise SourceFailed(f"no set after {sets}")


def sync_stream_source_error(address: str) -> None:
    with Client(address) as client:
        answers: list[Prediction] = []
        with pytest.raises(SourceFailed, match="no set after 3"):
            answers.extend(client.predict_stream("linear", failing_feeds(3)))
        assert len(answers) == 3
        assert client.predict("linear", {"x": x_input()}).version == 1


async def test_sync_stream_raises_its_sources_error_after_the_answers_before_it(address: str) -> None:
    await asyncio.to_thread(sync_stream_source_error, address)


async def test_sync_registry(address: str, tmp_path: Path) -> None:
    await asyncio.to_thread(sync_registry, address, tmp_path)


# Async client


async def test_async_inference(address: str, model_files: dict[str, Path]) -> None:
    x = x_input()
    async with AsyncClient([address], timeout=10) as client:
        await client.wait_ready(10)
        check_linear(await client.predict("linear", {"x": x}), model_files["linear"], x)
        check_linear(
            await client.predict("linear", {"x": x}, version=1, routing_key="k", timeout=5),
            model_files["linear"],
            x,
        )
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await client.predict("linear", {"x": np.zeros((1, 3), np.float32)})
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

        async def feeds() -> AsyncIterator[dict[str, np.ndarray]]:
            for i in range(4):
                yield {"x": x_input(seed=i)}

        answers = [a async for a in client.predict_stream("linear", feeds())]
        assert len(answers) == 4
        for i, answer in enumerate(answers):
            check_linear(answer, model_files["linear"], x_input(seed=i))
        listed = [a async for a in client.predict_stream("linear", [{"x": x}, {"x": x}])]
        assert [a.version for a in listed] == [1, 1]

        stream = client.predict_stream("linear", [{"x": x}, {"x": np.zeros((2, 3), np.float32)}, {"x": x}])
        assert (await anext(stream)).version == 1
        with pytest.raises(StreamMessageError) as err:
            await anext(stream)
        assert err.value.message_id == "1" and err.value.status == grpc.StatusCode.INVALID_ARGUMENT
        await stream.aclose()

        sig = await client.signature("add", 1)
        assert [name for name, _, _ in sig.inputs] == ["a", "b"]


async def test_async_registry(address: str, tmp_path: Path) -> None:
    path = tmp_path / "linear2.onnx"
    onnx_models.linear(path, seed=9)
    progress: list[tuple[int, int]] = []
    threads: set[int] = set()

    def report(sent: int, total: int) -> None:
        progress.append((sent, total))
        threads.add(threading.get_ident())

    async with AsyncClient(address) as client:
        info = await client.register(path, "linear", progress=report)
        assert info.version == 2 and info.state == "ready" and progress[-1][0] == path.stat().st_size
        assert threads == {threading.get_ident()}  # called on the event loop, not gRPC's upload thread
        assert sorted(m.name for m in await client.list_models()) == ["add", "linear"]
        assert [v.version for v in (await client.get_model("linear")).versions] == [1, 2]
        assert [v.version for v in await client.list_versions("linear")] == [1, 2]
        assert (await client.get_version("linear", 1)).state == "ready"
        await client.unload("linear", 2)
        assert (await client.predict("linear", {"x": x_input()})).version == 1
        assert (await client.load("linear", 2)).state == "ready"
        assert (await client.predict("linear", {"x": x_input()})).version == 2


REFUSALS = 200


async def test_async_register_reports_every_refusal_with_the_servers_status(
    address: str, tmp_path: Path
) -> None:
    """The server refuses the manifest while the client writes the model's chunk. grpc.aio's own
    client turned about 3% of these into INTERNAL "Internal error from Core" (grpc/grpc#36066),
    so 200 refusals catch it with a probability of about 0.998."""
    path = tmp_path / "m.onnx"
    onnx_models.linear(path)
    seen: Counter[tuple[grpc.StatusCode, bool]] = Counter()
    async with AsyncClient(address) as client:
        for _ in range(REFUSALS):
            with pytest.raises(grpc.aio.AioRpcError) as refused:
                await client.register(path, "m", providers=["tensorrt:trt_fp16=1"])
            seen[refused.value.code(), "'trt_fp16'" in (refused.value.details() or "")] += 1
        assert seen == {(grpc.StatusCode.INVALID_ARGUMENT, True): REFUSALS}
        assert sorted(m.name for m in await client.list_models()) == ["add", "linear"]


async def test_cancelling_the_task_that_awaits_a_blocking_call_cancels_the_call() -> None:
    started, ended, release = threading.Event(), threading.Event(), threading.Event()

    def hang(request: bytes, context: grpc.ServicerContext) -> bytes:
        context.add_callback(ended.set)
        started.set()
        release.wait(30)
        return request

    server = grpc.server(ThreadPoolExecutor(2))
    handler = grpc.unary_unary_rpc_method_handler(hang)
    server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler("t.T", {"Hang": handler})])
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary("/t.T/Hang").future(b"x", timeout=30)
            task = asyncio.create_task(awaited(call))
            assert await asyncio.to_thread(started.wait, 10)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            assert call.cancelled()
            assert await asyncio.to_thread(ended.wait, 10)  # the server saw the call end
    finally:
        release.set()
        server.stop(None)


STREAMS_REFUSED = 40


async def test_async_streams_refused_for_their_token_report_unauthenticated(tmp_path: Path) -> None:
    """The server ends the stream at once while the client writes its 50 messages; grpc.aio's own
    client reported INTERNAL "Internal error from Core" for 230 of 300 such streams."""
    path = tmp_path / "linear.onnx"
    onnx_models.linear(path)
    server = make_server(tmp_path / "data", {"linear": path}, infer_tokens=("right",))
    await server.start()
    seen: Counter[grpc.StatusCode] = Counter()
    try:
        async with AsyncClient(f"127.0.0.1:{server.port}", token="wrong") as client:
            for _ in range(STREAMS_REFUSED):
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    async for _answer in client.predict_stream("linear", [{"x": x_input()}] * 50):
                        pass
                seen[refused.value.code()] += 1

            async def waiting_source() -> AsyncIterator[dict[str, np.ndarray]]:
                yield {"x": x_input()}
                await asyncio.Event().wait()  # a live feed with nothing more to send yet
                yield {"x": x_input()}

            with pytest.raises(grpc.aio.AioRpcError) as refused:
                async for _answer in client.predict_stream("linear", waiting_source()):
                    pass
            seen[refused.value.code()] += 1
        async with AsyncClient(f"127.0.0.1:{server.port}", token="right") as client:
            answers = [a async for a in client.predict_stream("linear", [{"x": x_input()}] * 50)]
            assert len(answers) == 50
    finally:
        await server.stop(0)
    assert seen == {grpc.StatusCode.UNAUTHENTICATED: STREAMS_REFUSED + 1}


def answer_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "ortserve-stream-answers"]


async def test_an_async_stream_raises_its_sources_error_after_the_answers_before_it(address: str) -> None:
    async def feeds() -> AsyncIterator[dict[str, np.ndarray]]:
        for feeds in failing_feeds(3):
            yield feeds

    async with AsyncClient(address) as client:
        for source in (feeds(), failing_feeds(3)):  # an async iterable, then an iterable
            answers: list[Prediction] = []
            with pytest.raises(SourceFailed, match="no set after 3"):
                async for answer in client.predict_stream("linear", source):
                    answers.append(answer)
            assert len(answers) == 3
        assert (await client.predict("linear", {"x": x_input()})).version == 1


async def test_closing_an_async_stream_early_cancels_it_and_lets_its_threads_go(
    address: str, server: OrtServer
) -> None:
    """The consumer stops while the source still waits for its next set: the call is cancelled, the
    pending read of the source too, and the answers' reader thread ends."""
    next_set = asyncio.Event()  # never set: the source waits after its first set
    closed = asyncio.Event()
    caller = contextvars.ContextVar("caller", default="")
    caller.set("the test")
    seen_by_source: list[str] = []

    async def feeds() -> AsyncIterator[dict[str, np.ndarray]]:
        try:
            seen_by_source.append(caller.get())
            yield {"x": x_input()}
            await next_set.wait()
            yield {"x": x_input()}
        finally:
            for _ in range(10):  # a cleanup that awaits (closing a connection, say)
                await asyncio.sleep(0)
            closed.set()

    async with AsyncClient(address) as client:
        stream = client.predict_stream("linear", feeds())
        assert (await anext(stream)).version == 1
        await stream.aclose()
        assert closed.is_set() and seen_by_source == ["the test"]  # read in the caller's context
        for thread in answer_threads():
            await asyncio.to_thread(thread.join, 10)
        assert answer_threads() == []
        assert (await client.predict("linear", {"x": x_input()})).version == 1


async def test_a_model_file_that_fails_to_read_raises_its_own_error(
    address: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The server refuses the short upload; the caller sees why it was short (both clients)."""
    path = tmp_path / "m.onnx"
    onnx_models.linear(path)

    def failing_upload(manifest: Any, path: Path, progress: Any) -> Iterator[Any]:
        yield rpb.RegisterModelRequest(manifest=manifest)
        yield rpb.RegisterModelRequest(chunk=path.read_bytes()[:100])
        raise OSError(5, "Input/output error", str(path))

    monkeypatch.setattr(client_module, "upload_requests", failing_upload)
    monkeypatch.setattr(aio_module, "upload_requests", failing_upload)
    async with AsyncClient(address) as client:
        with pytest.raises(OSError, match="Input/output error"):
            await client.register(path, "linear")

    def sync_register() -> None:
        with Client(address) as client, pytest.raises(OSError, match="Input/output error"):
            client.register(path, "linear")

    await asyncio.to_thread(sync_register)
    async with AsyncClient(address) as client:
        assert [v.version for v in await client.list_versions("linear")] == [1]


# numpy dtypes end to end


@pytest.fixture
async def identity_server(tmp_path: Path) -> AsyncIterator[OrtServer]:
    models = {}
    for name, (elem, _) in DTYPES.items():
        path = tmp_path / f"id-{name}.onnx"
        onnx_models.identity(path, elem=elem, shape=("N", 3))
        models[f"id-{name}"] = path
    server = make_server(tmp_path / "data", models)
    await server.start()
    yield server
    await server.stop(0)


async def test_dtype_round_trips(identity_server: OrtServer) -> None:
    address = f"127.0.0.1:{identity_server.port}"
    async with AsyncClient(address) as client:
        for name, (_, value) in DTYPES.items():
            result = await client.predict(f"id-{name}", {"x": value})
            got = result.outputs["y"]
            if name == "string":
                assert got.tolist() == [[s.encode() for s in row] for row in value.tolist()]
            else:
                assert got.dtype == value.dtype, name
                np.testing.assert_array_equal(got, value, err_msg=name)

    def sync_round_trip() -> None:
        with Client(address) as client:
            for name, (_, value) in DTYPES.items():
                if name != "string":
                    got = client.predict(f"id-{name}", {"x": value}).outputs["y"]
                    assert got.dtype == value.dtype
                    np.testing.assert_array_equal(got, value)

    await asyncio.to_thread(sync_round_trip)
