"""`kill -9` of a server while it promotes, loads or retires a version, at exact points (the test-only
crash points of ortserve.faults): after a restart on the same data every version is READY-able or
FAILED with its reason, nothing READY is lost, aliases point at versions that exist, the audit log
agrees, every blob matches its sha256, and SQLite's integrity check is ok.

(Kills during and right after a registration: tests/integration/test_crash.py.)
"""

from __future__ import annotations

import shutil
import signal
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from ortserve import faults
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.store import hash_file
from tests import onnx_models
from tests.integration.processes import start_server
from tests.server_calls import (
    MODEL,
    WAIT_S,
    Connection,
    aliases,
    connect,
    predict,
    production,
    register,
    versions,
)


@dataclass(frozen=True)
class Template:
    """A stopped server's data: versions 1 and 2 READY, production -> 1; version 3 not yet sent."""

    data: Path
    third: Path


@dataclass(frozen=True)
class Scenario:
    point: str  # where the server kills itself
    act: Callable[[Connection, Template], object]  # the call that reaches that point
    ready: frozenset[int]  # versions that must load and answer after the restart
    retired: frozenset[int]
    production: int
    last_audited: str  # the newest audit action after the restart


def promote_2(conn: Connection, _template: Template) -> object:
    return conn.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=2), timeout=30)


def retire_2(conn: Connection, _template: Template) -> object:
    return conn.registry.RetireModelVersion(rpb.RetireModelVersionRequest(name=MODEL, version=2), timeout=30)


def register_3(conn: Connection, template: Template) -> object:
    return register(conn, template.third)


BOTH, ALL = frozenset({1, 2}), frozenset({1, 2, 3})
NONE = frozenset[int]()
SCENARIOS = {
    "promotion_before_commit": Scenario("commit:promote:durable:2", promote_2, BOTH, NONE, 1, "register"),
    "promotion_after_commit": Scenario("committed:promote:durable:2", promote_2, BOTH, NONE, 2, "promote"),
    "load_of_a_new_version": Scenario("load:durable:3", register_3, ALL, NONE, 1, "register"),
    "retirement_before_commit": Scenario("commit:retire:durable:2", retire_2, BOTH, NONE, 1, "register"),
    "retirement_after_commit": Scenario(
        "committed:retire:durable:2", retire_2, frozenset({1}), frozenset({2}), 1, "retire"
    ),
}


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Template:
    root = tmp_path_factory.mktemp("kill9-template")
    paths = [root / f"v{n}.onnx" for n in (1, 2, 3)]
    for seed, path in enumerate(paths, 1):
        onnx_models.linear(path, seed=seed)
    server = start_server(root, "template", "--data-dir", str(root / "data"))
    conn = connect(server)
    try:
        assert register(conn, paths[0]).state == mpb.VERSION_STATE_READY
        conn.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=1), timeout=30)
        assert register(conn, paths[1]).state == mpb.VERSION_STATE_READY
    finally:
        conn.close()
        assert server.stop() == 0, server.output()
    return Template(root / "data", paths[2])


@pytest.mark.parametrize("scenario", SCENARIOS.values(), ids=SCENARIOS.keys())
def test_kill_9_mid_change_loses_nothing(
    scenario: Scenario, template: Template, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    data = tmp_path / "data"
    shutil.copytree(template.data, data)
    monkeypatch.setenv(faults.VARIABLE, scenario.point)  # read once, by the server process at start
    server = start_server(tmp_path, "crashing", "--data-dir", str(data))
    monkeypatch.delenv(faults.VARIABLE)
    conn = connect(server)
    try:
        with pytest.raises(grpc.RpcError):
            scenario.act(conn, template)
        assert server.proc.wait(WAIT_S) == -signal.SIGKILL, server.output()
    finally:
        conn.close()
        server.kill()
    assert_sqlite_intact(data / "registry.db")

    restarted = start_server(tmp_path, "restarted", "--data-dir", str(data))
    conn = connect(restarted)
    try:
        assert_recovered(conn, data, scenario)
    finally:
        conn.close()
        assert restarted.stop() == 0, restarted.output()


def assert_sqlite_intact(path: Path) -> None:
    db = sqlite3.connect(path)
    try:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert db.execute("PRAGMA foreign_key_check").fetchall() == []
    finally:
        db.close()


def assert_recovered(conn: Connection, data: Path, scenario: Scenario) -> None:
    for number in sorted(scenario.ready):  # READY-able: loads here and answers
        load = rpb.LoadModelVersionRequest(name=MODEL, version=number)
        assert conn.registry.LoadModelVersion(load, timeout=WAIT_S).version.state == mpb.VERSION_STATE_READY
        assert predict(conn, str(number)).model_version == number
    expected = {n: mpb.VERSION_STATE_READY for n in scenario.ready}
    expected |= {n: mpb.VERSION_STATE_RETIRED for n in scenario.retired}
    assert dict(versions(conn)) == expected

    assert production(conn) == scenario.production
    assert set(aliases(conn).values()) <= scenario.ready, aliases(conn)
    assert predict(conn).model_version == scenario.production

    events = conn.registry.ListAuditEvents(rpb.ListAuditEventsRequest(name=MODEL, limit=1), timeout=10).events
    assert [e.action for e in events] == [scenario.last_audited]

    listed = conn.registry.ListModelVersions(rpb.ListModelVersionsRequest(name=MODEL), timeout=10).versions
    for version in listed:
        blob = data / "store" / "sha256" / version.sha256[:2] / f"{version.sha256}.onnx"
        assert hash_file(blob) == (version.size_bytes, version.sha256), f"version {version.version}"
