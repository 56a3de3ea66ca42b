"""Derivations and profiles run on threads of their own, at most max_toolkit_jobs at once."""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import grpc
import pytest

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from tests.integration.conftest import Running, expect_error

BASIC = mpb.DerivationRecipe(optimize=mpb.OptimizeRecipe(level="basic"))
LIMIT = 2  # ServerConfig's default max_toolkit_jobs


def derive() -> rpb.DeriveModelVersionRequest:
    return rpb.DeriveModelVersionRequest(model="linear", version=1, recipe=BASIC)


async def test_jobs_over_the_limit_are_refused_while_reads_still_answer(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    registry = running.server.parts.control.registry
    entered, release = threading.Semaphore(0), threading.Event()
    real = registry.derive

    def held(*args: Any, **kwargs: Any) -> Any:
        entered.release()
        release.wait(60)
        return real(*args, **kwargs)

    monkeypatch.setattr(registry, "derive", held)
    calls = [asyncio.ensure_future(running.registry.DeriveModelVersion(derive())) for _ in range(LIMIT)]
    try:
        for _ in range(LIMIT):
            assert await asyncio.to_thread(entered.acquire, True, 30)
        # Before the limit, a third job took one more of the default executor's threads and waited.
        profile = rpb.ProfileModelVersionRequest(model="linear", version=1)
        for call in [
            running.registry.DeriveModelVersion(derive(), timeout=10),
            running.registry.ProfileModelVersion(profile, timeout=10),
        ]:
            await expect_error(call, grpc.StatusCode.RESOURCE_EXHAUSTED, "2 derivation or profile jobs")
        shown = await running.registry.GetModelVersion(
            rpb.GetModelVersionRequest(name="linear", version=1), timeout=10
        )
        assert shown.version.version == 1
    finally:
        release.set()
    made = sorted(answer.version.version for answer in await asyncio.gather(*calls))
    assert made == [2, 3]
    listed = await running.registry.ListModelVersions(rpb.ListModelVersionsRequest(name="linear"))
    assert len(listed.versions) == 3  # the refused one registered nothing
    profiled = await running.registry.ProfileModelVersion(
        rpb.ProfileModelVersionRequest(model="linear", version=1, runs=1)
    )
    assert profiled.operators  # the slots are free again
