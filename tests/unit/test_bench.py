"""The load generator's arithmetic and message encoding, and the benchmark model builders (no timing)."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnxruntime as ort
import pytest

from ortserve.api.inference import grpc_service_pb2 as oip
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.bench import loadgen
from ortserve.bench.stats import latency_summary, percentile, server_timing, summarize
from ortserve.errors import InvalidInput

ROOT = Path(__file__).resolve().parents[2]


def _bench_module(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "bench" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


models = _bench_module("models")


@pytest.mark.parametrize("q", [0, 1, 10, 25, 50, 90, 99, 99.9, 100])
def test_percentile_matches_numpy_linear(q: float) -> None:
    values = sorted(np.random.default_rng(1).exponential(3.0, 1001).tolist())
    assert percentile(values, q) == pytest.approx(float(np.percentile(values, q)))


def test_percentile_edges() -> None:
    assert math.isnan(percentile([], 50))
    assert percentile([7.0], 99) == 7.0
    assert percentile([1.0, 2.0], 50) == 1.5
    with pytest.raises(ValueError, match=r"0\.\.100"):
        percentile([1.0], 101)


def test_latency_summary_in_ms() -> None:
    lat_ns = [i * 1_000_000 for i in range(1, 101)]  # 1..100 ms
    s = latency_summary(lat_ns)
    assert s["p50"] == pytest.approx(50.5)
    assert s["p90"] == pytest.approx(90.1)
    assert s["p99"] == pytest.approx(99.01)
    assert s["max"] == 100.0
    assert s["mean"] == pytest.approx(50.5)


def test_summarize_throughput_rows_and_errors() -> None:
    summary = summarize(
        [2_000_000] * 400, 4.0, rows_per_request=8, errors_by_code={"UNAVAILABLE": 3, "DEADLINE_EXCEEDED": 1}
    )
    assert summary.requests == 400
    assert summary.throughput_rps == 100.0
    assert summary.rows_per_s == 800.0
    assert summary.errors == 4
    assert list(summary.errors_by_code) == ["DEADLINE_EXCEEDED", "UNAVAILABLE"]
    data = summary.as_dict()
    assert data["latency_ms"]["p99"] == 2.0
    assert data["server"] is None


def test_summarize_without_successes_is_json_safe() -> None:
    data = summarize([], 1.0, errors_by_code={"UNAVAILABLE": 5}).as_dict()
    assert data["requests"] == 0 and data["throughput_rps"] == 0.0
    assert data["latency_ms"]["p50"] is None
    with pytest.raises(ValueError, match="elapsed"):
        summarize([1], 0.0)


def test_server_timing() -> None:
    assert server_timing([], [], []) is None
    t = server_timing([10, 30], [100, 300], [4, 8])
    assert t is not None
    assert (t.samples, t.queue_us_mean, t.compute_us_mean, t.batch_size_mean, t.batch_size_max) == (
        2,
        20,
        200,
        6,
        8,
    )
    assert t.compute_us_p50 == 200


def test_input_spec_parse_and_concrete_shape() -> None:
    spec = loadgen.InputSpec.parse("x:fp32:-1,3,-1")
    assert spec == loadgen.InputSpec("x", "FP32", (-1, 3, -1))
    assert spec.concrete(5) == (5, 3, 1)
    for bad in ("x:FP32", "x:NOPE:1", "x:FP32:a,b", ":FP32:1"):
        with pytest.raises(InvalidInput):
            loadgen.InputSpec.parse(bad)


def test_options_validation() -> None:
    with pytest.raises(InvalidInput, match="echo"):
        loadgen.BenchOptions("h:1", "m", protocol="echo")
    with pytest.raises(InvalidInput, match="streams"):
        loadgen.BenchOptions("h:1", "m", protocol="ortserve-stream", concurrency=2, streams=3)
    with pytest.raises(InvalidInput, match="duration"):
        loadgen.BenchOptions("h:1", "m", duration_s=None)
    loadgen.BenchOptions("h:1", "m", duration_s=None, requests=10)


def test_prebuilt_messages_round_trip() -> None:
    specs = (loadgen.InputSpec("x", "FP32", (-1, 16)), loadgen.InputSpec("ids", "INT64", (-1,)))
    feeds = loadgen.random_inputs(specs, 4, seed=3)
    assert feeds["x"].shape == (4, 16) and feeds["x"].dtype == np.float32
    assert feeds["ids"].shape == (4,) and feeds["ids"].dtype == np.int64

    request = ipb.PredictRequest.FromString(loadgen.predict_request("tiny", "2", feeds))
    assert (request.model, request.version) == ("tiny", "2")
    x = request.inputs[0]
    assert x.name == "x" and list(x.shape) == [4, 16]
    np.testing.assert_array_equal(np.frombuffer(x.raw_data, "<f4").reshape(4, 16), feeds["x"])

    infer = oip.ModelInferRequest.FromString(loadgen.model_infer_request("tiny", "", feeds))
    assert [(t.name, t.datatype, list(t.shape)) for t in infer.inputs] == [
        ("x", "FP32", [4, 16]),
        ("ids", "INT64", [4]),
    ]
    np.testing.assert_array_equal(np.frombuffer(infer.raw_input_contents[1], "<i8"), feeds["ids"])


def test_stream_message_encoding() -> None:
    payload = loadgen.predict_request("tiny", "", {"x": np.ones((1, 16), np.float32)})
    raw = loadgen.stream_message(b"12345", loadgen.request_field(payload))
    message = ipb.PredictStreamRequest.FromString(raw)
    assert message.id == "12345"
    assert message.request.SerializeToString() == payload
    big = loadgen.predict_request("wide", "", {"x": np.ones((64, 512), np.float32)})  # multi-byte varint
    assert (
        ipb.PredictStreamRequest.FromString(
            loadgen.stream_message(b"7", loadgen.request_field(big))
        ).request.model
        == "wide"
    )


def test_raw_bytes_of_strings_is_length_prefixed() -> None:
    data = loadgen.raw_bytes(np.array([b"ab", b""], dtype=object))
    assert data == b"\x02\x00\x00\x00ab\x00\x00\x00\x00"


@pytest.mark.parametrize("name", sorted(models.SIGNATURES))
def test_bench_models_have_the_documented_signature(name: str, tmp_path: Path) -> None:
    path = models.build(name, tmp_path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x_name, x_shape, y_name, y_shape = models.SIGNATURES[name]
    (inp,) = session.get_inputs()
    (out,) = session.get_outputs()
    assert (inp.name, inp.type, inp.shape) == (x_name, "tensor(float)", x_shape)
    assert (out.name, out.type) == (y_name, "tensor(float)")
    assert out.shape[1:] == y_shape[1:]
    for rows in (1, 3):
        (y,) = session.run(None, {x_name: models.example_input(name, rows)})
        assert y.shape == (rows, *y_shape[1:])
        assert np.isfinite(y).all()


def test_bench_models_are_deterministic(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    assert (
        models.build("mlp", tmp_path / "a").read_bytes() == models.build("mlp", tmp_path / "b").read_bytes()
    )
