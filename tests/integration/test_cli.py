"""The `ortserve` command as a user runs it: serve in a subprocess, then client commands against it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from tests import onnx_models
from tests.integration.processes import start_server


def ortserve(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "ortserve", *args], capture_output=True, text=True, timeout=120, check=False
    )
    if check and proc.returncode != 0:
        pytest.fail(f"ortserve {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    server = start_server(tmp_path, "cli", "--examples", "--data-dir", str(tmp_path / "data"))
    yield server.address, tmp_path
    assert server.stop() == 0, server.output()


def test_examples_register_predict_and_show(served: tuple[str, Path]) -> None:
    address, tmp = served
    listed = ortserve("models", "list", "--server", address).stdout  # a tab-separated table off a terminal
    assert "add\t1:ready\t" in listed and "linear\t1:ready\t" in listed

    out = json.loads(
        ortserve(
            "predict", "add", "--server", address, "--input", "a=[[1,2,3,4]]", "--input", "b=[[10,20,30,40]]"
        ).stdout
    )
    assert out["outputs"]["z"] == [[11, 22, 33, 44]] and out["version"] == 1

    model = tmp / "mine.onnx"
    onnx_models.linear(model, seed=5)
    registered = ortserve("models", "register", str(model), "--name", "mine", "--server", address)
    assert "registered mine version 1 (ready)" in registered.stdout

    x = np.random.default_rng(0).standard_normal((3, 16)).astype(np.float32)
    np.save(tmp / "x.npy", x)
    out = json.loads(ortserve("predict", "mine", "--server", address, "--input", f"x={tmp / 'x.npy'}").stdout)
    expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
    np.testing.assert_allclose(np.array(out["outputs"]["y"], np.float32), expected, rtol=1e-5)

    shown = json.loads(ortserve("models", "show", "mine", "--server", address, "--json").stdout)
    assert shown["versions"][0]["inputs"] == [{"name": "x", "dtype": "FP32", "shape": [-1, 16]}]
    assert "x FP32 [N, 16]" in ortserve("models", "show", "mine", "--server", address).stdout


def test_client_errors_are_one_line_with_the_status(served: tuple[str, Path]) -> None:
    address, _ = served
    proc = ortserve("predict", "nope", "--server", address, "--input", "x=[1]", check=False)
    assert proc.returncode == 1
    assert proc.stderr.strip() == "error: NOT_FOUND: model 'nope' is not registered"
    proc = ortserve(
        "predict", "add", "--server", address, "--input", "a=[[1,2,3]]", "--input", "b=[[1,2,3]]", check=False
    )
    assert (
        "INVALID_ARGUMENT: model 'add' input 'a': shape [1, 3] does not match the expected [-1, 4]"
        in proc.stderr
    )
    proc = ortserve(
        "models", "register", "/nonexistent.onnx", "--name", "x", "--server", address, check=False
    )
    assert proc.returncode == 2 and "No such file" in proc.stderr


def test_config_show_and_db_upgrade(tmp_path: Path) -> None:
    env_port = {**os.environ, "ORTSERVE_PORT": "9123"}
    proc = subprocess.run(
        [sys.executable, "-m", "ortserve", "config", "show", "--data-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        env=env_port,
        timeout=60,
        check=True,
    )
    shown = json.loads(proc.stdout)
    assert shown["port"] == 9123 and shown["data_dir"] == str(tmp_path)
    out = ortserve("db", "upgrade", "--data-dir", str(tmp_path)).stdout
    assert "is up to date" in out and (tmp_path / "registry.db").exists()


@pytest.mark.parametrize("command", [("db", "upgrade"), ("serve", "--examples")])
def test_an_unreachable_database_is_one_line_without_the_password(
    command: tuple[str, ...], tmp_path: Path
) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql+psycopg://ops:s3cret@127.0.0.1:{port}/registry"
    proc = ortserve(*command, "--db", url, "--data-dir", str(tmp_path), "--port", "0", check=False)
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "s3cret" not in proc.stderr
    shown = f"postgresql+psycopg://ops:***@127.0.0.1:{port}/registry"
    assert lines[0].startswith(f"error: db {shown}: cannot open")


@pytest.mark.parametrize("command", [("db", "gc"), ("db", "upgrade")])
def test_a_database_url_sqlalchemy_cannot_use_is_one_line(command: tuple[str, ...], tmp_path: Path) -> None:
    proc = ortserve(*command, "--db", "nosuchdialect://x", "--data-dir", str(tmp_path), check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: db is not a usable SQLAlchemy URL: ")
    assert len(proc.stderr.strip().splitlines()) == 1


def test_rollout_walkthrough(served: tuple[str, Path]) -> None:
    """The README's rollout walkthrough, command by command."""
    address, tmp = served
    for seed in (1, 2):
        onnx_models.linear(tmp / f"fraud-{seed}.onnx", seed=seed)
        ortserve(
            "models", "register", str(tmp / f"fraud-{seed}.onnx"), "--name", "fraud", "--server", address
        )
    assert (
        "production -> version 1 (new alias)"
        in ortserve("models", "promote", "fraud", "1", "--server", address).stdout
    )
    out = ortserve(
        "models", "traffic", "set", "fraud", "1=90", "2=10", "--sticky", "--server", address
    ).stdout
    assert "traffic 1=90 2=10 (sticky)" in out
    assert (
        "shadow 2 gets 0.5"
        in ortserve("models", "shadow", "set", "fraud", "2", "--share", "0.5", "--server", address).stdout
    )
    shown = json.loads(ortserve("models", "show", "fraud", "--server", address, "--json").stdout)
    assert shown["aliases"] == {"production": 1}
    assert shown["traffic"]["weights"] == {"1": 90, "2": 10} and shown["traffic"]["sticky"]
    ortserve("models", "traffic", "clear", "fraud", "--server", address)
    ortserve("models", "shadow", "clear", "fraud", "--server", address)
    assert (
        "production -> version 2 (was 1)"
        in ortserve("models", "promote", "fraud", "2", "--server", address).stdout
    )
    out = json.loads(ortserve("predict", "fraud", "--server", address, "--input", f"x={[[0.5] * 16]}").stdout)
    assert out["version"] == 2
    assert "rolled back to version 1" in ortserve("models", "rollback", "fraud", "--server", address).stdout
    refused = ortserve("models", "retire", "fraud", "1", "--server", address, check=False)
    assert refused.returncode == 1 and "used by alias 'production'" in refused.stderr
    assert "version 2 retired" in ortserve("models", "retire", "fraud", "2", "--server", address).stdout
    audit = ortserve("models", "audit", "fraud", "--server", address).stdout.splitlines()
    assert audit[:2] == ["# audit log", "TIME (UTC)\tACTION\tMODEL\tVERSION\tACTOR\tCHANGE"]
    actions = [line.split()[2] for line in audit[2:]]
    assert actions == [
        "retire",
        "rollback",
        "promote",
        "shadow.set",
        "traffic.set",
        "shadow.set",
        "traffic.set",
        "promote",
        "register",
        "register",
    ]
    bad = ortserve("models", "traffic", "set", "fraud", "1=lots", "--server", address, check=False)
    assert bad.returncode == 2 and "TARGET=WEIGHT with a whole number" in bad.stderr
