"""The model store runs out of room during RegisterModel: RESOURCE_EXHAUSTED naming the store (no
path, no raw OSError), no partial version, no temp file left, and the server keeps serving.

Two real limits: a 4 MiB tmpfs under the store (ENOSPC; needs root and mount), and a 4 MiB file
size limit on the server process (EFBIG; Python ignores SIGXFSZ, so the write fails instead of
killing the process; works unprivileged on Linux).
"""

from __future__ import annotations

import re
import resource
import shutil
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager, nullcontext
from pathlib import Path

import grpc
import pytest

from ortserve.api.v1 import model_pb2 as mpb
from ortserve.errors import Unavailable
from ortserve.store import hash_file
from ortserve.store.file import FileStore
from tests import onnx_models
from tests.integration.processes import start_server
from tests.server_calls import connect, predict, register, versions

LIMIT_BYTES = 4 << 20
# linear(n_in=2048, n_out=1024): an 8 MiB weight, twice the room the store has.
BIG_IN, BIG_OUT = 2048, 1024


@contextmanager
def tmpfs(folder: Path) -> Iterator[None]:
    """A LIMIT_BYTES tmpfs mounted on `folder` for the block's duration; skip where mounting is refused."""
    if shutil.which("mount") is None:
        pytest.skip("no mount command to put the model store on a small tmpfs")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={LIMIT_BYTES}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs needs root (CAP_SYS_ADMIN): {done.stderr.strip()}")
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(folder)], capture_output=True, timeout=30, check=True)


@pytest.mark.parametrize("limit", ["tmpfs", "file_size_limit"])
def test_a_full_store_refuses_the_upload_and_keeps_serving(limit: str, tmp_path: Path) -> None:
    data = tmp_path / "data"
    store = data / "store"
    store.mkdir(parents=True)
    small = [tmp_path / "v1.onnx", tmp_path / "v2.onnx"]
    onnx_models.linear(small[0], seed=1)
    onnx_models.linear(small[1], seed=2)
    big = tmp_path / "big.onnx"
    onnx_models.linear(big, n_in=BIG_IN, n_out=BIG_OUT, seed=3)
    big_size, big_sha = hash_file(big)
    assert big_size > 2 * LIMIT_BYTES - (1 << 20)

    with tmpfs(store) if limit == "tmpfs" else nullcontext():
        server = start_server(tmp_path, limit, "--data-dir", str(data))
        if limit == "file_size_limit":
            resource.prlimit(server.proc.pid, resource.RLIMIT_FSIZE, (LIMIT_BYTES, LIMIT_BYTES))
        conn = connect(server)
        try:
            assert register(conn, small[0]).state == mpb.VERSION_STATE_READY
            before = predict(conn)

            with pytest.raises(grpc.RpcError) as info:
                register(conn, big)
            error: grpc.Call = info.value  # type: ignore[assignment]
            details = error.details() or ""
            assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED, details
            assert details.startswith("the model store is full ("), details
            assert "/" not in details and str(tmp_path) not in details, details
            assert not any(text in details for text in ("Errno", "OSError", ".part", "upload-")), details

            assert versions(conn) == [(1, mpb.VERSION_STATE_READY)]
            assert list((store / "tmp").iterdir()) == []
            assert not (store / "sha256" / big_sha[:2]).exists()
            assert predict(conn).outputs == before.outputs

            added = register(conn, small[1])
            assert (added.version, added.state) == (2, mpb.VERSION_STATE_READY)
            assert predict(conn, "2").model_version == 2
        finally:
            conn.close()
            server.stop()
    _detail_is_logged(details, server.log.read_text(errors="replace"), store / "tmp")


def _detail_is_logged(details: str, log: str, folder: Path) -> None:
    """The caller's correlation id leads to the log line that names the file."""
    found = re.search(r"correlation id (\w+)", details)
    assert found, details
    lines = [line for line in log.splitlines() if found.group(1) in line]
    assert lines, f"no log line carries correlation id {found.group(1)}:\n{log[-3000:]}"
    assert str(folder) in lines[0], lines[0]


def test_a_store_that_cannot_be_written_is_unavailable_without_its_path(tmp_path: Path) -> None:
    store = FileStore(tmp_path / "store")
    shutil.rmtree(store.tmp)  # an operator or a cleanup job removed the folder under a running server
    expected = r"^the model store cannot be written \(No such file or directory"
    with pytest.raises(Unavailable, match=expected) as info:
        store.open_upload(expected_size=1, expected_sha256="0" * 64)
    assert str(tmp_path) not in str(info.value)
