"""The Prometheus endpoint, scraped over HTTP after real traffic: counts agree with what was sent."""

from __future__ import annotations

import asyncio
import urllib.request

import grpc
import numpy as np
from prometheus_client.parser import text_string_to_metric_families

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.client.client import to_tensor
from tests.integration.conftest import Running, expect_error

LINEAR = {"model": "linear", "version": "1"}


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


async def test_scraped_metrics_count_requests_batches_and_errors(running: Running) -> None:
    rng = np.random.default_rng(3)
    calls = [
        running.inference.Predict(
            ipb.PredictRequest(
                model="linear", inputs=[to_tensor("x", rng.standard_normal((rows, 16), np.float32))]
            )
        )
        for rows in (1, 2, 3, 1, 2, 3, 1, 2)
    ]
    await asyncio.gather(*calls)
    bad = ipb.PredictRequest(model="linear", inputs=[to_tensor("x", np.zeros((1, 15), np.float32))])
    await expect_error(running.inference.Predict(bad), grpc.StatusCode.INVALID_ARGUMENT, "x")

    samples = await asyncio.to_thread(scrape, running.server.metrics_port)

    predict = "/ortserve.api.v1.InferenceService/Predict"
    assert value(samples, "ortserve_rpc_total", method=predict, code="OK") == 8
    assert value(samples, "ortserve_rpc_total", method=predict, code="INVALID_ARGUMENT") == 1
    assert value(samples, "ortserve_rpc_duration_seconds_count", method=predict) == 9
    assert value(samples, "ortserve_request_duration_seconds_count", **LINEAR) == 8
    assert value(samples, "ortserve_queue_duration_seconds_count", **LINEAR) == 8
    assert value(samples, "ortserve_inflight_requests", **LINEAR) == 0
    assert value(samples, "ortserve_queue_depth", **LINEAR) == 0
    batches = value(samples, "ortserve_batch_size_count", **LINEAR)
    assert 1 <= batches <= 8
    assert value(samples, "ortserve_batch_size_sum", **LINEAR) == 15  # rows sent
    on_cpu = {**LINEAR, "provider": "CPUExecutionProvider"}
    assert value(samples, "ortserve_compute_duration_seconds_count", **on_cpu) == batches
    reasons = ("immediate", "full", "preferred", "delay", "deadline")
    flushed = sum(value(samples, "ortserve_batch_flush_total", **LINEAR, reason=r) for r in reasons)
    assert flushed == batches
    # Buckets are cumulative and end at the count.
    buckets = sorted(
        (float(dict(labels)["le"]), v)
        for (name, labels), v in samples.items()
        if name == "ortserve_request_duration_seconds_bucket" and dict(labels)["model"] == "linear"
    )
    counts = [v for _, v in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == (float("inf"), 8)
