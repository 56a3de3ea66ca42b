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
from ortserve.bench.processes import shares
from ortserve.bench.stats import Samples, latency_summary, merge_results, percentile, server_timing, summarize
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


def _child_result(
    latencies_ms: list[int], errors: dict[str, int], window: tuple[float, float], elapsed_s: float
) -> tuple[dict[str, object], Samples]:
    """A child's result as measure() makes it (processes=1), with the samples behind it."""
    samples = Samples(
        [ms * 1_000_000 for ms in latencies_ms],
        [10] * len(latencies_ms),
        [100] * len(latencies_ms),
        [2] * len(latencies_ms),
    )
    summary = summarize(
        samples.latencies_ns,
        elapsed_s,
        rows_per_request=4,
        errors_by_code=errors,
        server=server_timing(samples.queue_us, samples.compute_us, samples.batch_sizes),
    )
    result: dict[str, object] = {
        "protocol": "oip",
        "concurrency": 2,
        "processes": 1,
        "streams": None,
        "requests_target": len(latencies_ms) + sum(errors.values()),
        **summary.as_dict(),
        "window_unix": list(window),
        "client_cpu_cores": 0.5,
    }
    return result, samples


def test_merge_results_sums_counts_and_takes_percentiles_over_all_samples() -> None:
    fast, fast_samples = _child_result([1] * 90, {"UNAVAILABLE": 1}, (100.0, 110.0), 10.0)
    slow, slow_samples = _child_result([100] * 10, {"UNAVAILABLE": 2, "INTERNAL": 1}, (101.0, 112.0), 12.0)
    merged = merge_results([fast, slow], [fast_samples, slow_samples])
    assert list(merged) == [*fast, "by_process"]  # the child's keys, in order, plus the breakdown
    assert (merged["requests"], merged["errors"], merged["processes"]) == (100, 4, 2)
    assert merged["errors_by_code"] == {"INTERNAL": 1, "UNAVAILABLE": 3}
    assert (merged["concurrency"], merged["requests_target"], merged["streams"]) == (4, 104, None)
    assert merged["throughput_rps"] == pytest.approx(90 / 10 + 10 / 12)
    assert merged["rows_per_s"] == pytest.approx(4 * (90 / 10 + 10 / 12))
    assert merged["elapsed_s"] == 11.0
    assert merged["window_unix"] == [101.0, 110.0]
    assert merged["client_cpu_cores"] == 1.0
    # over all 100 latencies: p50 is fast, p99 slow; averaging the children's p50s would give 50.5 ms
    assert merged["latency_ms"]["p50"] == 1.0
    assert merged["latency_ms"]["p99"] == 100.0
    assert merged["latency_ms"]["mean"] == pytest.approx(10.9)
    assert merged["server"]["samples"] == 100
    assert [p["requests"] for p in merged["by_process"]] == [90, 10]


def test_merge_results_keeps_unknowns_unknown() -> None:
    first, first_samples = _child_result([], {"UNAVAILABLE": 2}, (1.0, 2.0), 1.0)
    second, second_samples = _child_result([], {}, (1.0, 2.0), 1.0)
    first["client_cpu_cores"] = None
    first["requests_target"] = second["requests_target"] = None
    merged = merge_results([first, second], [first_samples, second_samples])
    assert merged["client_cpu_cores"] is None and merged["requests_target"] is None
    assert merged["latency_ms"]["p50"] is None and merged["server"] is None
    with pytest.raises(ValueError, match="one Samples per result"):
        merge_results([first], [])


def test_shares_split_the_load_evenly() -> None:
    options = loadgen.BenchOptions(
        "h:1",
        "m",
        protocol="ortserve-stream",
        concurrency=7,
        streams=5,
        requests=10,
        duration_s=None,
        seed=3,
        processes=3,
    )
    parts = shares(options)
    assert [p.concurrency for p in parts] == [3, 2, 2]
    assert [p.streams for p in parts] == [2, 2, 1]
    assert [p.requests for p in parts] == [4, 3, 3]
    assert [p.seed for p in parts] == [3, 4, 5]
    assert {p.processes for p in parts} == {1}


def test_processes_need_a_share_each() -> None:
    with pytest.raises(InvalidInput, match="--processes 3 exceeds --concurrency 2"):
        loadgen.BenchOptions("h:1", "m", concurrency=2, processes=3)
    with pytest.raises(InvalidInput, match="exceeds --streams 2"):
        loadgen.BenchOptions("h:1", "m", protocol="ortserve-stream", concurrency=8, streams=2, processes=3)
    with pytest.raises(InvalidInput, match="exceeds --requests 2"):
        loadgen.BenchOptions("h:1", "m", concurrency=8, requests=2, duration_s=None, processes=3)
    with pytest.raises(InvalidInput, match=">= 1"):
        loadgen.BenchOptions("h:1", "m", processes=0)


def test_text_output_names_the_processes() -> None:
    result, _ = _child_result([1, 2], {}, (1.0, 2.0), 1.0)
    result.update(model="m", target="h:1", batch_rows=4, server=None)
    assert "from" not in loadgen.format_text(result)
    result["processes"] = 2
    assert "concurrency 2 from 2 processes, 4 rows/request" in loadgen.format_text(result)


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
