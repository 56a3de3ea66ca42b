"""`ortserve db gc` after a `kill -9`: the server dies while an upload is mid-stream and while a
second registration commits (its blob stored, its row not), leaving a temp file and an orphan blob.
gc keeps them within the grace period, lists them with --dry-run, then removes exactly them and
keeps every blob a version references."""

from __future__ import annotations

import re
import signal
from pathlib import Path

import grpc
import pytest

from ortserve import faults
from ortserve.api.v1 import model_pb2 as mpb
from ortserve.cli import main
from ortserve.store import hash_file
from tests import onnx_models
from tests.integration.processes import start_server
from tests.server_calls import (
    CHUNK,
    WAIT_S,
    connect,
    predict,
    register,
    start_held_upload,
    versions,
    wait_for_upload_bytes,
)

HELD_CHUNKS = 2
BIG_IN, BIG_OUT = 1024, 1024  # a 4 MiB weight: the held upload has sent half of it


def gc(capsys: pytest.CaptureFixture[str], data: Path, *flags: str) -> list[str]:
    """Run `ortserve db gc` on `data`; its output lines."""
    capsys.readouterr()
    assert main(["db", "gc", "--data-dir", str(data), *flags]) == 0
    return capsys.readouterr().out.splitlines()


def test_db_gc_removes_what_a_crash_left_and_keeps_referenced_blobs(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, store = tmp_path / "data", tmp_path / "data" / "store"
    paths = [tmp_path / "v1.onnx", tmp_path / "v2.onnx", tmp_path / "big.onnx"]
    onnx_models.linear(paths[0], seed=1)
    onnx_models.linear(paths[1], seed=2)
    onnx_models.linear(paths[2], n_in=BIG_IN, n_out=BIG_OUT, seed=3)

    monkeypatch.setenv(faults.VARIABLE, "commit:register:durable:2")
    server = start_server(tmp_path, "crashing", "--data-dir", str(data))
    monkeypatch.delenv(faults.VARIABLE)
    conn = connect(server)
    try:
        assert register(conn, paths[0]).state == mpb.VERSION_STATE_READY
        upload = start_held_upload(conn, paths[2], HELD_CHUNKS)
        wait_for_upload_bytes(store / "tmp", HELD_CHUNKS * CHUNK, server)
        with pytest.raises(grpc.RpcError):
            register(conn, paths[1])  # the server kills itself just before this version's COMMIT
        assert server.proc.wait(WAIT_S) == -signal.SIGKILL, server.output()
        upload.release.set()
        assert isinstance(upload.call.exception(timeout=WAIT_S), grpc.RpcError)
    finally:
        conn.close()
        server.kill()

    kept = _blob(store, paths[0])
    orphan = _blob(store, paths[1])
    temps = sorted((store / "tmp").iterdir())
    assert orphan.is_file() and len(temps) == 1
    garbage = {orphan: orphan.stat().st_size, temps[0]: temps[0].stat().st_size}

    assert gc(capsys, data) == ["removed 0 file(s), 0 bytes freed"]  # all younger than the hour's grace
    listed = gc(capsys, data, "--grace", "0", "--dry-run")
    assert _reported(listed, "would remove") == garbage
    assert listed[-1] == f"would remove 2 file(s), {sum(garbage.values())} bytes (dry run)"
    assert all(path.exists() for path in garbage)

    removed = gc(capsys, data, "--grace", "0")
    assert _reported(removed, "removed") == garbage
    assert removed[-1] == f"removed 2 file(s), {sum(garbage.values())} bytes freed"
    assert not any(path.exists() for path in garbage)
    assert hash_file(kept) == hash_file(paths[0])  # version 1's blob stays
    assert gc(capsys, data, "--grace", "0") == ["removed 0 file(s), 0 bytes freed"]

    restarted = start_server(tmp_path, "restarted", "--data-dir", str(data))
    conn = connect(restarted)
    try:
        assert versions(conn) == [(1, mpb.VERSION_STATE_READY)]
        assert predict(conn).model_version == 1
        again = register(conn, paths[1])
        assert (again.version, again.state) == (2, mpb.VERSION_STATE_READY)
    finally:
        conn.close()
        assert restarted.stop() == 0, restarted.output()


def _blob(store: Path, model: Path) -> Path:
    sha256 = hash_file(model)[1]
    return store / "sha256" / sha256[:2] / f"{sha256}.onnx"


def _reported(lines: list[str], verb: str) -> dict[Path, int]:
    """The files and sizes gc's lines name: "<verb> <path> (<n> bytes)"."""
    found = [re.fullmatch(rf"{verb} (.+) \((\d+) bytes\)", line) for line in lines[:-1]]
    assert all(found), lines
    return {Path(m.group(1)): int(m.group(2)) for m in found if m}
