"""The SDK's rollout methods, sync and asyncio, against a real server."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import grpc
import numpy as np
import pytest

from ortserve.client import AsyncClient, Client, ModelEvent
from ortserve.server.app import OrtServer
from tests import onnx_models

X = {"x": np.ones((1, 16), np.float32)}


def two_versions(client: Client, tmp_path: Path, name: str) -> tuple[int, int]:
    versions = []
    for seed in (1, 2):
        path = tmp_path / f"{name}-{seed}.onnx"
        onnx_models.linear(path, seed=seed)
        versions.append(client.register(path, name).version)
    return versions[0], versions[1]


def sync_rollout(address: str, tmp_path: Path) -> None:
    with Client(address) as client:
        v1, v2 = two_versions(client, tmp_path, "sdk")
        alias = client.promote("sdk", v1)
        assert (alias.name, alias.version, alias.previous_version) == ("production", v1, 0)
        assert client.predict("sdk", X).version == v1
        canary = client.set_alias("sdk", "canary", v2)
        assert client.predict("sdk", X, version="canary").version == canary.version == v2
        traffic = client.set_traffic("sdk", {v1: 0, "canary": 100}, sticky=True)
        assert traffic.weights == {str(v1): 0, "canary": 100} and traffic.sticky
        assert {client.predict("sdk", X, routing_key=f"k{i}").version for i in range(10)} == {v2}
        shadow = client.set_shadow("sdk", v1, 1.0)
        assert (shadow.shadow_target, shadow.shadow_share) == (str(v1), 1.0)
        client.predict("sdk", X)
        info = client.get_model("sdk")
        assert info.aliases == {"canary": v2, "production": v1} and info.traffic is not None
        client.set_shadow("sdk", "", 0)
        client.set_traffic("sdk", {})
        with pytest.raises(grpc.RpcError) as refused:
            client.retire("sdk", v2)
        assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        client.delete_alias("sdk", "canary")
        client.promote("sdk", v2)
        rolled = client.rollback("sdk")
        assert (rolled.version, rolled.previous_version) == (v1, v2)
        assert client.retire("sdk", v2).version == v2
        actions = [e.action for e in client.audit("sdk")]
        assert actions[:3] == ["retire", "rollback", "promote"] and actions[-1] == "register"


async def test_sync_rollout_methods(address: str, tmp_path: Path) -> None:
    await asyncio.to_thread(sync_rollout, address, tmp_path)


async def subscribed(server: OrtServer) -> None:
    """Wait (bounded) until a WatchModels stream has subscribed to the server's events."""
    for _ in range(500):
        if server.parts.control.pool.events.subscribers:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the watch stream never subscribed")


async def test_sync_watch(server: OrtServer, address: str, tmp_path: Path) -> None:
    events: list[ModelEvent] = []
    ready = threading.Event()

    def watch() -> None:
        with Client(address) as client:
            stream = client.watch(["watched"])
            ready.set()
            for event in stream:
                events.append(event)
                if event.kind == "alias":
                    return

    watcher = asyncio.create_task(asyncio.to_thread(watch))
    await asyncio.to_thread(ready.wait, 5)
    await subscribed(server)
    with Client(address) as client:
        path = tmp_path / "w.onnx"
        onnx_models.linear(path)
        version = (await asyncio.to_thread(client.register, path, "watched")).version
        await asyncio.to_thread(client.promote, "watched", version)
    await asyncio.wait_for(watcher, 10)
    assert events[0].kind == "registered" and events[-1].detail == f"production={version}"


async def test_async_rollout_methods(server: OrtServer, address: str, tmp_path: Path) -> None:
    async with AsyncClient(address) as client:
        versions = []
        for seed in (1, 2):
            path = tmp_path / f"a-{seed}.onnx"
            onnx_models.linear(path, seed=seed)
            versions.append((await client.register(path, "async")).version)
        v1, v2 = versions
        events: list[ModelEvent] = []

        async def watch() -> None:
            async for event in client.watch(["async"]):
                events.append(event)
                if event.kind == "alias" and "canary" in event.detail:
                    return

        watcher = asyncio.create_task(watch())
        await subscribed(server)
        assert (await client.promote("async", v1)).version == v1
        assert (await client.set_alias("async", "canary", v2)).version == v2
        assert (await client.set_traffic("async", {"canary": 1})).weights == {"canary": 1}
        assert (await client.predict("async", X)).version == v2
        assert (await client.set_shadow("async", v1, 0.5)).shadow_share == 0.5
        await client.set_shadow("async", "", 0)
        await client.set_traffic("async", {})
        await client.delete_alias("async", "canary")
        await client.promote("async", v2)
        assert (await client.rollback("async")).version == v1
        assert (await client.retire("async", v2)).version == v2
        assert [e.action for e in await client.audit("async", limit=2)] == ["retire", "rollback"]
        await asyncio.wait_for(watcher, 10)
        assert any(e.kind == "alias" for e in events)
