"""Custom operator libraries against a real server: an onnxruntime-extensions string operator served
with BYTES tensors through Predict (the SDK) and OIP ModelInfer, whether the library comes from the
`onnxruntime_extensions` setting or from `custom_op_libraries`; a domain nothing provides is refused
at registration naming it; a library that does not load stops the start naming it."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import struct
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.inference import grpc_service_pb2 as oip
from ortserve.api.inference import grpc_service_pb2_grpc as oip_grpc
from ortserve.cli import main
from ortserve.client.aio import AsyncClient
from ortserve.config import ServerConfig
from ortserve.errors import InvalidInput
from ortserve.server.app import OrtServer
from ortserve.server.deps import build_server
from tests import onnx_models

needs_extensions = pytest.mark.skipif(
    importlib.util.find_spec("onnxruntime_extensions") is None,
    reason="onnxruntime-extensions is not installed (it has no wheel for this Python yet)",
)
TEXTS = ["hello", "", "Mixed Case 42"]
UPPER = [b"HELLO", b"", b"MIXED CASE 42"]


def upper_model(path: Path) -> Path:
    onnx_models.string_upper(path)
    return path


@contextlib.asynccontextmanager
async def started(tmp_path: Path, **settings: Any) -> AsyncIterator[OrtServer]:
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), **settings))
    await server.start()
    try:
        yield server
    finally:
        await server.stop(0)


def extension_settings(how: str) -> dict[str, Any]:
    if how == "extensions":
        return {"onnxruntime_extensions": True}
    import onnxruntime_extensions

    return {
        "onnxruntime_extensions": False,
        "custom_op_libraries": (onnxruntime_extensions.get_library_path(),),
        "custom_op_domains": ("ai.onnx.contrib",),
    }


def bytes_elements(elements: list[bytes]) -> bytes:
    """OIP's BYTES encoding: each element as a 4-byte little-endian length, then its bytes."""
    return b"".join(struct.pack("<I", len(e)) + e for e in elements)


def elements_of(raw: bytes) -> list[bytes]:
    elements, at = [], 0
    while at < len(raw):
        (size,) = struct.unpack_from("<I", raw, at)
        elements.append(raw[at + 4 : at + 4 + size])
        at += 4 + size
    return elements


@needs_extensions
@pytest.mark.parametrize("how", ["extensions", "custom_op_libraries"])
async def test_a_string_operator_serves_bytes_through_predict_and_model_infer(
    tmp_path: Path, how: str
) -> None:
    async with started(tmp_path, **extension_settings(how)) as server:
        address = f"127.0.0.1:{server.port}"
        async with AsyncClient(address) as client:
            await client.register(upper_model(tmp_path / "upper.onnx"), "upper")
            prediction = await client.predict("upper", {"x": np.array(TEXTS, dtype=object)})
        assert prediction.outputs["y"].tolist() == UPPER
        infer = oip.ModelInferRequest(
            model_name="upper",
            inputs=[oip.ModelInferRequest.InferInputTensor(name="x", datatype="BYTES", shape=[3])],
            raw_input_contents=[bytes_elements([t.encode() for t in TEXTS])],
        )
        async with aio.insecure_channel(address) as channel:
            response = await oip_grpc.GRPCInferenceServiceStub(channel).ModelInfer(infer, timeout=30)
        [output] = response.outputs
        assert (output.name, output.datatype, list(output.shape)) == ("y", "BYTES", [3])
        assert elements_of(response.raw_output_contents[0]) == UPPER
        # The session, custom operator and all, went through the optimized-model cache.
        assert server.parts.metrics.registry.get_sample_value("ortserve_load_cache_total", {"result": "miss"})


async def test_a_domain_nothing_provides_is_refused_at_registration_naming_it(tmp_path: Path) -> None:
    settings = {"onnxruntime_extensions": False}
    async with started(tmp_path, **settings) as server, AsyncClient(f"127.0.0.1:{server.port}") as client:
        with pytest.raises(aio.AioRpcError) as info:
            await client.register(upper_model(tmp_path / "upper.onnx"), "upper")
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert info.value.details() == (
            "operator domain 'ai.onnx.contrib' (node 'upper') is not allowed; "
            "allowed: '', 'ai.onnx', 'ai.onnx.ml', 'com.microsoft'"
        )
        onnx_models.linear(tmp_path / "linear.onnx")
        await client.register(tmp_path / "linear.onnx", "linear")
        prediction = await client.predict("linear", {"x": np.ones((1, 16), np.float32)})
        assert prediction.outputs["y"].shape == (1, 4)
        assert [m.name for m in await client.list_models()] == ["linear"]


def not_a_library(tmp_path: Path) -> Path:
    path = tmp_path / "libnot-a-library.so"
    path.write_text("not a shared library")
    return path


@pytest.mark.parametrize(
    ("make", "problem"),
    [
        (lambda tmp: tmp / "libmissing.so", "does not exist or is not a file"),
        (not_a_library, "does not load into ONNX Runtime (correlation id "),
    ],
)
def test_a_library_that_does_not_load_stops_the_start_naming_it(
    tmp_path: Path, make: Any, problem: str
) -> None:
    library = str(make(tmp_path))
    config = ServerConfig(
        port=0, metrics_port=0, data_dir=str(tmp_path / "data"), custom_op_libraries=(library,)
    )
    with pytest.raises(InvalidInput) as info:
        build_server(config)
    message = str(info.value)
    assert message.startswith(f"custom_op_libraries: {library!r} {problem}"), message
    assert "\n" not in message
    assert not (tmp_path / "data").exists()  # refused before anything was built


def test_config_show_prints_the_custom_operator_settings(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("ORTSERVE_CUSTOM_OP_LIBRARIES", "/opt/ops/libmyops.so, /opt/ops/libmore.so")
    monkeypatch.setenv("ORTSERVE_CUSTOM_OP_DOMAINS", "com.example.ops")
    monkeypatch.setenv("ORTSERVE_ONNXRUNTIME_EXTENSIONS", "false")
    assert main(["config", "show"]) == 0
    shown = json.loads(capsys.readouterr().out)
    assert shown["custom_op_libraries"] == ["/opt/ops/libmyops.so", "/opt/ops/libmore.so"]
    assert shown["custom_op_domains"] == ["com.example.ops"]
    assert shown["onnxruntime_extensions"] is False
    assert shown["optimized_model_cache"] is True


def test_domains_without_libraries_are_refused() -> None:
    with pytest.raises(InvalidInput, match=r"^custom_op_domains names domains of custom_op_libraries"):
        ServerConfig(custom_op_domains=("com.example.ops",))
