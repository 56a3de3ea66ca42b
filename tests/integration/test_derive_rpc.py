"""DeriveModelVersion and ProfileModelVersion through a real server and the generated stubs."""

from __future__ import annotations

import hashlib
import json

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.api.v1 import tensor_pb2 as tpb
from tests.integration.conftest import Running, expect_error
from tests.server_calls import upload as upload_blocking

ROWS = 6
SAMPLES = np.random.default_rng(3).standard_normal((ROWS, 16)).astype(np.float32)


def tensor(array: np.ndarray, name: str = "x") -> tpb.Tensor:
    return tpb.Tensor(name=name, data_type=tpb.DATA_TYPE_FP32, shape=array.shape, raw_data=array.tobytes())


def upload(data: bytes, name: str, samples: list[tpb.Tensor]) -> list[rpb.RegisterModelRequest]:
    manifest = rpb.RegisterManifest(
        name=name, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(), samples=samples
    )
    return [rpb.RegisterModelRequest(manifest=manifest), rpb.RegisterModelRequest(chunk=data)]


def derive(version: int, recipe: mpb.DerivationRecipe, **fields: object) -> rpb.DeriveModelVersionRequest:
    return rpb.DeriveModelVersionRequest(model="scored", version=version, recipe=recipe, **fields)  # type: ignore[arg-type]


DYNAMIC = mpb.DerivationRecipe(quantize=mpb.QuantizeRecipe(mode=mpb.QUANTIZE_MODE_DYNAMIC))


async def count(running: Running) -> int:
    response = await running.registry.ListModelVersions(rpb.ListModelVersionsRequest(name="scored"))
    return len(response.versions)


async def predict(running: Running, version: str) -> np.ndarray:
    request = ipb.PredictRequest(model="scored", version=version, inputs=[tensor(SAMPLES)])
    response = await running.inference.Predict(request)
    out = response.outputs[0]
    return np.frombuffer(out.raw_data, np.float32).reshape(tuple(out.shape))


async def test_register_with_samples_derive_gate_serve_and_refuse(running: Running) -> None:
    data = running.models["linear"].read_bytes()
    for samples, message in [
        ([tensor(SAMPLES[:, :8])], "sample inputs: input 'x': shape [6, 8] does not match"),
        ([tensor(SAMPLES), tensor(SAMPLES)], "sample input 'x' is given twice"),
    ]:
        await expect_error(
            upload_blocking(running.address, upload(data, "scored", samples)),
            grpc.StatusCode.INVALID_ARGUMENT,
            message,
        )
    registered = await running.registry.RegisterModel(iter(upload(data, "scored", [tensor(SAMPLES)])))
    assert registered.version.version == 1
    assert registered.version.sample_rows == ROWS and registered.version.derived_from == 0
    assert not registered.version.HasField("recipe") and not registered.version.HasField("report")

    gate = mpb.EvaluationGate(max_abs_diff=1.0)
    answer = await running.registry.DeriveModelVersion(derive(1, DYNAMIC, gate=gate, load=True))
    made = answer.version
    assert (made.version, made.derived_from, made.sample_rows) == (2, 1, ROWS)
    assert made.state == mpb.VERSION_STATE_READY
    assert made.recipe.quantize.mode == mpb.QUANTIZE_MODE_DYNAMIC
    assert made.report.samples == "given" and made.report.sample_rows == ROWS
    assert made.report.gate.max_abs_diff == 1.0 and made.report.size_ratio > 0
    shown = await running.registry.GetModelVersion(rpb.GetModelVersionRequest(name="scored", version=2))
    assert shown.version.recipe == made.recipe and shown.version.report == made.report
    source, derived = await predict(running, "1"), await predict(running, "2")
    assert np.abs(source - derived).max() == pytest.approx(made.report.outputs[0].max_abs_diff, abs=1e-4)

    # A gate the quantized version misses: refused, nothing registered.
    strict = mpb.EvaluationGate(max_abs_diff=1e-9)
    await expect_error(
        running.registry.DeriveModelVersion(derive(1, DYNAMIC, gate=strict)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "max abs diff",
    )
    assert await count(running) == 2

    # Requests that name a bad field: refused with the cause, nothing registered.
    static = mpb.DerivationRecipe(quantize=mpb.QuantizeRecipe(mode=mpb.QUANTIZE_MODE_STATIC))
    bad = [
        (derive(1, mpb.DerivationRecipe()), "recipe must set one of optimize, quantize or fp16"),
        (derive(1, mpb.DerivationRecipe(quantize=mpb.QuantizeRecipe())), "quantize mode must be one of"),
        (derive(0, DYNAMIC), "version must be a version number >= 1"),
        (
            derive(1, static, calibration=[tensor(np.zeros((4, 15), np.float32))]),
            "calibration inputs: input 'x'",
        ),
        (derive(1, DYNAMIC, gate=mpb.EvaluationGate(min_agreement=2.0)), "gate min_agreement must be"),
    ]
    for request, message in bad:
        await expect_error(
            running.registry.DeriveModelVersion(request), grpc.StatusCode.INVALID_ARGUMENT, message
        )
    await expect_error(
        running.registry.DeriveModelVersion(derive(7, DYNAMIC)), grpc.StatusCode.NOT_FOUND, "version 7"
    )
    assert await count(running) == 2

    # A model the quantizer cannot handle (a STRING identity: nothing it can quantize).
    request = rpb.DeriveModelVersionRequest(model="strings", version=1, recipe=DYNAMIC)
    with pytest.raises(aio.AioRpcError) as refused:
        await running.registry.DeriveModelVersion(request)
    assert refused.value.code() in {grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.FAILED_PRECONDITION}
    assert "quantize dynamic: " in (refused.value.details() or "")
    listed = await running.registry.ListModelVersions(rpb.ListModelVersionsRequest(name="strings"))
    assert len(listed.versions) == 1
    assert await count(running) == 2

    # A good request still succeeds.
    basic = mpb.DerivationRecipe(optimize=mpb.OptimizeRecipe(level="basic"))
    optimized = (await running.registry.DeriveModelVersion(derive(1, basic))).version
    assert (optimized.version, optimized.derived_from, optimized.sample_rows) == (3, 1, ROWS)
    assert optimized.recipe.optimize.level == "basic" and optimized.report.outputs[0].max_abs_diff < 1e-4


async def test_profile_returns_operators_and_a_chrome_trace(running: Running) -> None:
    profiled = await running.registry.ProfileModelVersion(
        rpb.ProfileModelVersionRequest(model="linear", version=1)
    )
    assert profiled.operators and profiled.mean_run_ms > 0
    assert sum(o.share for o in profiled.operators) == pytest.approx(1.0)
    totals = [o.total_us for o in profiled.operators]
    assert totals == sorted(totals, reverse=True) and profiled.operators[0].calls == 10
    assert isinstance(json.loads(profiled.chrome_trace), list)
    assert "CPUExecutionProvider" in profiled.providers
    await expect_error(
        running.registry.ProfileModelVersion(
            rpb.ProfileModelVersionRequest(model="linear", version=1, runs=1001)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "runs is 1001",
    )
    await expect_error(
        running.registry.ProfileModelVersion(
            rpb.ProfileModelVersionRequest(model="linear", version=1, batch_size=1025)
        ),
        grpc.StatusCode.INVALID_ARGUMENT,
        "batch is 1025",
    )
