"""Model version rollout on a real server: aliases, weighted and sticky traffic, rollback, shadow,
warm-up failures and the audit log, under continuous load."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc import aio

from ortserve.api.inference import grpc_service_pb2 as gpb
from ortserve.api.inference import grpc_service_pb2_grpc as gpb_grpc
from ortserve.api.v1 import inference_service_pb2 as ipb
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.client.client import to_tensor
from tests import onnx_models
from tests.integration.conftest import Running, expect_error

X = np.ones((1, 16), np.float32)
CALLERS = 32
PHASE_S = 4.0


async def register(running: Running, tmp_path: Path, name: str, build: object, **kwargs: object) -> int:
    path = tmp_path / f"{name}-{time.monotonic_ns()}.onnx"
    build(path, **kwargs)  # type: ignore[operator]
    record = await asyncio.to_thread(running.server.parts.control.registry.register_file, path, name)
    await running.server.parts.control.refresh()
    await running.server.parts.control.settle()
    return record.version


async def subscribed(running: Running) -> None:
    """Wait (bounded) until a WatchModels stream has subscribed to the server's events."""
    for _ in range(500):
        if running.server.parts.control.pool.events.subscribers:
            return
        await asyncio.sleep(0.01)


def predict(model: str, key: str = "", version: str = "") -> ipb.PredictRequest:
    return ipb.PredictRequest(model=model, version=version, routing_key=key, inputs=[to_tensor("x", X)])


@dataclass
class Change:
    started: float
    done: float
    allowed: set[int]


@dataclass
class Answer:
    started: float
    done: float
    key: str
    version: int


def allowed_at(changes: list[Change], start: float, end: float) -> set[int]:
    """Versions a response may come from: any policy in force during [start, end] (switches included)."""
    allowed: set[int] = set()
    for i, change in enumerate(changes):
        until = changes[i + 1].done if i + 1 < len(changes) else float("inf")
        if change.started <= end and start <= until:
            allowed |= change.allowed
    return allowed


class Load:
    """CALLERS concurrent callers with routing keys, recording every answer and failure."""

    def __init__(self, running: Running) -> None:
        self.running = running
        self.answers: list[Answer] = []
        self.failures: list[str] = []
        self.changes: list[Change] = []
        self._stop = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def start(self, initial: set[int]) -> None:
        self.changes.append(Change(0.0, 0.0, initial))
        self._tasks = [asyncio.create_task(self._caller(i)) for i in range(CALLERS)]

    async def _caller(self, index: int) -> None:
        n = 0
        while not self._stop.is_set():
            key = f"user-{index}-{n % 5}"
            started = time.monotonic()
            try:
                response = await self.running.inference.Predict(predict("fraud", key), timeout=10)
                self.answers.append(Answer(started, time.monotonic(), key, response.model_version))
            except aio.AioRpcError as exc:
                self.failures.append(f"{exc.code().name}: {exc.details()}")
            n += 1

    async def change(self, make_call: Callable[[], Awaitable[object]], allowed: set[int]) -> None:
        """After a phase of load, make one change (an aio call starts when created: create it now)."""
        await asyncio.sleep(PHASE_S)
        started = time.monotonic()
        await make_call()
        self.changes.append(Change(started, time.monotonic(), allowed))

    async def stop(self) -> None:
        await asyncio.sleep(PHASE_S)
        self._stop.set()
        await asyncio.gather(*self._tasks)

    def wrong(self) -> list[Answer]:
        return [a for a in self.answers if a.version not in allowed_at(self.changes, a.started, a.done)]

    def versions_by_key(self, start: float, end: float) -> dict[str, set[int]]:
        by_key: dict[str, set[int]] = {}
        for a in self.answers:
            if start < a.started and a.done < end:
                by_key.setdefault(a.key, set()).add(a.version)
        return by_key


def split(weights: dict[int, int]) -> rpb.SetTrafficPolicyRequest:
    entries = [mpb.TrafficEntry(target=str(v), weight=w) for v, w in weights.items()]
    return rpb.SetTrafficPolicyRequest(name="fraud", entries=entries, sticky=True)


async def test_promote_split_and_rollback_under_load_fail_nothing(running: Running, tmp_path: Path) -> None:
    reg = running.registry
    v1 = await register(running, tmp_path, "fraud", onnx_models.linear, seed=1)
    v2 = await register(running, tmp_path, "fraud", onnx_models.linear, seed=2)
    await reg.SetAlias(rpb.SetAliasRequest(name="fraud", alias="production", version=v1))
    load = Load(running)
    load.start({v1})
    await load.change(
        lambda: reg.SetAlias(rpb.SetAliasRequest(name="fraud", alias="production", version=v2)), {v2}
    )
    await load.change(lambda: reg.SetTrafficPolicy(split({v1: 90, v2: 10})), {v1, v2})
    await load.change(lambda: reg.SetTrafficPolicy(split({v1: 0, v2: 100})), {v2})
    await load.change(lambda: reg.SetTrafficPolicy(rpb.SetTrafficPolicyRequest(name="fraud")), {v2})
    await load.change(lambda: reg.Rollback(rpb.RollbackRequest(name="fraud")), {v1})
    await load.stop()

    assert load.failures == []
    assert len(load.answers) > 1000
    assert load.wrong() == []
    assert {a.version for a in load.answers if a.started > load.changes[-1].done} == {v1}
    in_split = load.versions_by_key(load.changes[2].done, load.changes[3].started)
    assert in_split and all(len(versions) == 1 for versions in in_split.values())  # sticky keys stay
    assert set().union(*in_split.values()) == {v1, v2}

    audit = await reg.ListAuditEvents(rpb.ListAuditEventsRequest(name="fraud"))
    expected = ["register", "register", "promote", "promote"] + ["traffic.set"] * 3 + ["rollback"]
    assert [e.action for e in reversed(audit.events)] == expected


async def test_version_that_fails_warm_up_never_takes_traffic(running: Running, tmp_path: Path) -> None:
    reg = running.registry
    good = await register(running, tmp_path, "risky", onnx_models.linear)
    await reg.SetAlias(rpb.SetAliasRequest(name="risky", alias="production", version=good))
    bad = await register(running, tmp_path, "risky", onnx_models.fails_at_run)
    shown = await reg.GetModelVersion(rpb.GetModelVersionRequest(name="risky", version=bad))
    assert shown.version.state == mpb.VERSION_STATE_FAILED and "failed its warm-up" in shown.version.error
    await expect_error(
        reg.SetAlias(rpb.SetAliasRequest(name="risky", alias="production", version=bad)),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"model 'risky' version {bad} failed to load here and takes no traffic",
    )
    for _ in range(20):
        assert (await running.inference.Predict(predict("risky"))).model_version == good
    await expect_error(
        running.inference.Predict(predict("risky", version=str(bad))),
        grpc.StatusCode.FAILED_PRECONDITION,
        f"model 'risky' version {bad} is failed",
    )


@pytest.mark.parametrize(("seed", "identical"), [(1, True), (2, False)])
async def test_shadow_reports_differences(
    running: Running, tmp_path: Path, seed: int, identical: bool
) -> None:
    reg = running.registry
    served = await register(running, tmp_path, "shadowed", onnx_models.linear, seed=1)
    candidate = await register(running, tmp_path, "shadowed", onnx_models.linear, seed=seed)
    await reg.SetAlias(rpb.SetAliasRequest(name="shadowed", alias="production", version=served))
    await reg.SetShadow(rpb.SetShadowRequest(name="shadowed", target=str(candidate), share=1.0))
    for _ in range(20):
        response = await running.inference.Predict(predict("shadowed"))
        assert response.model_version == served
    report = mpb.ShadowReport()
    for _ in range(100):
        report = (await reg.GetModel(rpb.GetModelRequest(name="shadowed"))).model.shadow
        if report.compared >= 20:
            break
        await asyncio.sleep(0.05)
    assert report.shadow_version == candidate and report.compared >= 20 and report.errors == 0
    if identical:
        assert report.max_abs_diff == 0.0 and report.argmax_agreement == 1.0
    else:
        assert report.max_abs_diff > 0.1


async def test_retire_in_use_is_refused_and_aliases_are_visible(running: Running, tmp_path: Path) -> None:
    reg = running.registry
    v1 = await register(running, tmp_path, "old", onnx_models.linear)
    v2 = await register(running, tmp_path, "old", onnx_models.linear, seed=3)
    await reg.SetAlias(rpb.SetAliasRequest(name="old", alias="production", version=v1))
    await expect_error(
        reg.RetireModelVersion(rpb.RetireModelVersionRequest(name="old", version=v1)),
        grpc.StatusCode.FAILED_PRECONDITION,
        "alias 'production'",
    )
    await reg.SetAlias(rpb.SetAliasRequest(name="old", alias="production", version=v2))
    await reg.RetireModelVersion(rpb.RetireModelVersionRequest(name="old", version=v1))
    await expect_error(
        running.inference.Predict(predict("old", version=str(v1))),
        grpc.StatusCode.NOT_FOUND,
        f"model 'old' has no version {v1}",
    )
    model = (await reg.GetModel(rpb.GetModelRequest(name="old"))).model
    assert [(a.name, a.version, a.previous_version) for a in model.aliases] == [("production", v2, v1)]
    assert (await running.inference.Predict(predict("old", version="production"))).model_version == v2


async def test_watch_streams_registry_and_load_events(running: Running, tmp_path: Path) -> None:
    events: list[mpb.ModelEvent] = []

    async def watch() -> None:
        async for message in running.registry.WatchModels(rpb.WatchModelsRequest(names=["watched"])):
            events.append(message.event)
            if message.event.kind == "alias":
                return

    watcher = asyncio.create_task(watch())
    await subscribed(running)
    version = await register(running, tmp_path, "watched", onnx_models.linear)
    await running.registry.SetAlias(rpb.SetAliasRequest(name="watched", alias="production", version=version))
    await asyncio.wait_for(watcher, 10)
    kinds = [e.kind for e in events]
    assert kinds[0] == "registered" and "ready" in kinds and kinds[-1] == "alias"
    assert events[-1].detail == f"production={version}" and events[-1].revision > 0


async def test_retiring_the_last_version_leaves_a_clean_not_found(running: Running, tmp_path: Path) -> None:
    v1 = await register(running, tmp_path, "gone", onnx_models.linear)
    await running.registry.RetireModelVersion(rpb.RetireModelVersionRequest(name="gone", version=v1))
    oip = gpb_grpc.GRPCInferenceServiceStub(running.channel)
    await expect_error(
        oip.ModelMetadata(gpb.ModelMetadataRequest(name="gone")), grpc.StatusCode.NOT_FOUND, "'gone'"
    )
    await expect_error(running.inference.Predict(predict("gone")), grpc.StatusCode.NOT_FOUND, "'gone'")
    assert (await running.inference.Predict(predict("linear"))).model_version == 1  # still serving


async def test_watch_announces_a_deleted_alias(running: Running, tmp_path: Path) -> None:
    details: list[str] = []

    async def watch() -> None:
        async for message in running.registry.WatchModels(rpb.WatchModelsRequest(names=["unaliased"])):
            if message.event.kind == "alias":
                details.append(message.event.detail)
                if len(details) == 2:
                    return

    watcher = asyncio.create_task(watch())
    await subscribed(running)
    version = await register(running, tmp_path, "unaliased", onnx_models.linear)
    await running.registry.SetAlias(rpb.SetAliasRequest(name="unaliased", alias="canary", version=version))
    await running.registry.DeleteAlias(rpb.DeleteAliasRequest(name="unaliased", alias="canary"))
    await asyncio.wait_for(watcher, 10)
    assert details == [f"canary={version}", ""]
