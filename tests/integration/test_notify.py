"""Replicas on PostgreSQL hear registry changes at once (LISTEN/NOTIFY), without waiting for a poll,
and keep hearing them after their listening connection is killed."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import numpy as np
import pytest
import sqlalchemy as sa

from ortserve.config import ServerConfig
from ortserve.scheduler.calls import PredictCall
from ortserve.server.app import OrtServer
from tests import onnx_models

pytestmark = pytest.mark.postgres
WAIT_S = 10.0
NEVER_S = 3600.0  # the poll interval: only a notification can make a replica refresh in time


async def until(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    end = loop.time() + WAIT_S
    while not condition():
        if loop.time() > end:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.005)


@pytest.fixture
async def replicas(pg_url: str, tmp_path: Path) -> AsyncIterator[tuple[OrtServer, OrtServer]]:
    data = str(tmp_path / "shared")  # one model store for both, as on shared storage
    servers = [
        OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=data, db=pg_url, poll_interval_s=NEVER_S))
        for _ in range(2)
    ]
    for seed in (1, 2, 3):
        path = tmp_path / f"v{seed}.onnx"
        onnx_models.linear(path, seed=seed)
        servers[0].parts.control.registry.register_file(path, "fleet")
    servers[0].parts.control.registry.promote("fleet", 1)
    for server in servers:
        await server.start()
    yield servers[0], servers[1]
    for server in servers:
        await server.stop(0)


def production(server: OrtServer) -> int:
    return server.parts.control.pool.routes("fleet").aliases.get("production", 0)


async def served_by(server: OrtServer) -> int:
    call = PredictCall(model="fleet", selector="production", feeds={"x": np.ones((1, 16), np.float32)})
    return (await server.parts.core.predict(call)).version


async def test_a_promotion_reaches_the_other_replica_without_a_poll(
    replicas: tuple[OrtServer, OrtServer], pg_url: str
) -> None:
    a, b = replicas
    await until(lambda: b.parts.control._listen_task is not None, "the listener")
    await a.parts.control.set_alias("fleet", "production", 2, actor="test")
    await until(lambda: production(b) == 2, "replica B to route production to version 2")
    assert await served_by(b) == 2

    # Kill B's listening connection: it reconnects, and the next change still arrives at once.
    admin = sa.create_engine(pg_url, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        killed = conn.execute(
            sa.text(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = :name AND query LIKE 'LISTEN%'"
            ),
            {"name": f"ortserve-listen-{os.getpid()}"},
        ).scalar_one()
    admin.dispose()
    assert killed == 2  # both replicas' listeners (in this one process)
    await a.parts.control.set_alias("fleet", "production", 3, actor="test")
    await until(lambda: production(b) == 3, "replica B to route production to version 3 after reconnecting")
    assert await served_by(b) == 3
