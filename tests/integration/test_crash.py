"""`kill -9` of a server mid-registration leaves no half-visible version; after a restart every
version that was READY serves again, aliases hold, and version numbers carry on."""

from __future__ import annotations

from pathlib import Path

import grpc

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.api.v1 import registry_service_pb2 as rpb
from ortserve.store import hash_file
from tests import onnx_models
from tests.integration.processes import start_server
from tests.server_calls import (
    CHUNK,
    MODEL,
    WAIT_S,
    connect,
    predict,
    production,
    register,
    start_held_upload,
    versions,
    wait_for_upload_bytes,
)

# linear(n_in=2048, n_out=1024): an 8 MiB float32 weight, so the upload takes 8+ chunks.
BIG_IN, BIG_OUT = 2048, 1024
CHUNKS_BEFORE_KILL = 3


def test_kill_9_mid_registration_leaves_no_version_and_ready_ones_serve_again(tmp_path: Path) -> None:
    data = tmp_path / "data"
    small = [tmp_path / "v1.onnx", tmp_path / "next.onnx"]
    onnx_models.linear(small[0], seed=1)
    onnx_models.linear(small[1], seed=2)
    big = tmp_path / "big.onnx"
    onnx_models.linear(big, n_in=BIG_IN, n_out=BIG_OUT, seed=3)
    big_size, big_sha = hash_file(big)
    assert big_size > (CHUNKS_BEFORE_KILL + 4) * CHUNK

    server = start_server(tmp_path, "first", "--data-dir", str(data))
    conn = connect(server)
    try:
        assert register(conn, small[0]).state == mpb.VERSION_STATE_READY
        conn.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=1), timeout=30)
        before = predict(conn).outputs

        # The manifest and a few chunks; the rest is held back until the server is dead.
        upload = start_held_upload(conn, big, CHUNKS_BEFORE_KILL)
        wait_for_upload_bytes(data / "store" / "tmp", CHUNKS_BEFORE_KILL * CHUNK, server)
        server.kill()
        upload.release.set()
        error = upload.call.exception(timeout=WAIT_S)
        assert isinstance(error, grpc.RpcError), f"the interrupted upload answered {upload.call.result()}"
    finally:
        conn.close()
        server.kill()

    restarted = start_server(tmp_path, "second", "--data-dir", str(data))
    conn = connect(restarted)
    try:
        assert versions(conn) == [(1, mpb.VERSION_STATE_READY)]
        assert not (data / "store" / "sha256" / big_sha[:2] / f"{big_sha}.onnx").exists()
        assert production(conn) == 1
        answer = predict(conn)
        assert answer.model_version == 1 and answer.outputs == before

        added = register(conn, small[1])
        assert (added.version, added.state) == (2, mpb.VERSION_STATE_READY)
        assert predict(conn, "2").model_version == 2
        assert predict(conn).model_version == 1  # production still routes to version 1
        assert versions(conn) == [(1, mpb.VERSION_STATE_READY), (2, mpb.VERSION_STATE_READY)]
    finally:
        conn.close()
        restarted.stop()


def test_kill_9_right_after_a_registration_keeps_it(tmp_path: Path) -> None:
    data = tmp_path / "data"
    paths = [tmp_path / "v1.onnx", tmp_path / "v2.onnx"]
    onnx_models.linear(paths[0], seed=1)
    onnx_models.linear(paths[1], seed=2)

    server = start_server(tmp_path, "first", "--data-dir", str(data))
    conn = connect(server)
    try:
        assert register(conn, paths[0]).state == mpb.VERSION_STATE_READY
        conn.registry.SetAlias(rpb.SetAliasRequest(name=MODEL, alias="production", version=1), timeout=30)
        committed = register(conn, paths[1])
        assert (committed.version, committed.state) == (2, mpb.VERSION_STATE_READY)
        server.kill()
    finally:
        conn.close()
        server.kill()

    restarted = start_server(tmp_path, "second", "--data-dir", str(data))
    conn = connect(restarted)
    try:
        assert versions(conn) == [(1, mpb.VERSION_STATE_READY), (2, mpb.VERSION_STATE_READY)]
        shown = conn.registry.GetModelVersion(rpb.GetModelVersionRequest(name=MODEL, version=2), timeout=10)
        assert shown.version.sha256 == committed.sha256
        assert production(conn) == 1
        assert predict(conn).model_version == 1
        assert predict(conn, "2").model_version == 2
    finally:
        conn.close()
        restarted.stop()
