"""End-to-end checks of the example clients in clients/ (Node/TypeScript, C++, Go and Java).

Each client is built, a real `ortserve serve` is started as a subprocess, the `linear`
test model is registered with `ortserve models register`, and the client's unary and
stream answers are compared with onnxruntime run in-process on the same model and input.

A client is skipped only when its toolchain is missing (install it with
scripts/install_client_toolchains.sh); a build or run failure fails the test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from tests import onnx_models

REPO = Path(__file__).resolve().parents[2]
NODE_DIR = REPO / "clients" / "node"
CPP_DIR = REPO / "clients" / "cpp"
CPP_BUILD_DIR = CPP_DIR / "build"
GO_DIR = REPO / "clients" / "go"
JAVA_DIR = REPO / "clients" / "java"

MODEL_NAME = "linear"
SERVER_START_TIMEOUT_S = 60.0
BUILD_TIMEOUT_S = 900
RUN_TIMEOUT_S = 120
STREAM_MESSAGES = 3

pytestmark = pytest.mark.timeout(1200)


def _run(cmd: list[str], cwd: Path, timeout: float, what: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        pytest.fail(
            f"{what} failed ({proc.returncode}): {' '.join(cmd)}\n"
            f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
        )
    return proc


def _require_tools(client: str, tools: list[str]) -> None:
    missing = [tool for tool in tools if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{client} client toolchain missing: {', '.join(missing)} not on PATH "
            "(run scripts/install_client_toolchains.sh)"
        )


def _build_node() -> list[str]:
    _require_tools("Node", ["node", "npm"])
    if not (NODE_DIR / "node_modules" / ".package-lock.json").exists():
        _run(["npm", "ci", "--no-audit", "--no-fund"], NODE_DIR, BUILD_TIMEOUT_S, "npm ci")
    _run(["npm", "run", "build"], NODE_DIR, BUILD_TIMEOUT_S, "npm run build")
    return [shutil.which("node") or "node", str(NODE_DIR / "dist" / "example.js")]


def _build_cpp() -> list[str]:
    _require_tools("C++", ["cmake", "c++", "protoc", "grpc_cpp_plugin", "pkg-config"])
    if subprocess.run(["pkg-config", "--exists", "grpc++", "protobuf"], check=False).returncode != 0:
        pytest.skip(
            "C++ client toolchain missing: gRPC/protobuf development files (pkg-config grpc++ protobuf; "
            "Debian: libgrpc++-dev libprotobuf-dev; run scripts/install_client_toolchains.sh)"
        )
    _run(
        ["cmake", "-S", str(CPP_DIR), "-B", str(CPP_BUILD_DIR), "-DCMAKE_BUILD_TYPE=Release"],
        CPP_DIR,
        BUILD_TIMEOUT_S,
        "cmake configure",
    )
    _run(
        ["cmake", "--build", str(CPP_BUILD_DIR), "--target", "ortserve_example", "-j2"],
        CPP_DIR,
        BUILD_TIMEOUT_S,
        "cmake build",
    )
    return [str(CPP_BUILD_DIR / "ortserve_example")]


def _build_go() -> list[str]:
    _require_tools("Go", ["go", "protoc", "protoc-gen-go", "protoc-gen-go-grpc"])
    if not Path("/usr/share/gocode/src/google.golang.org/grpc").is_dir():
        pytest.skip(
            "Go client toolchain missing: Debian's golang-google-grpc-dev and golang-google-protobuf-dev "
            "under /usr/share/gocode (run scripts/install_client_toolchains.sh)"
        )
    _run(["bash", str(GO_DIR / "build.sh")], GO_DIR, BUILD_TIMEOUT_S, "Go build")
    return [str(GO_DIR / "build" / "ortserve_example")]


def _build_java() -> list[str]:
    _require_tools("Java", ["java", "javac", "protoc", "grpc_java_plugin"])
    if not Path("/usr/share/java/grpc-netty.jar").is_file():
        pytest.skip(
            "Java client toolchain missing: Debian's libgrpc-java and friends under /usr/share/java "
            "(run scripts/install_client_toolchains.sh)"
        )
    _run(["bash", str(JAVA_DIR / "build.sh")], JAVA_DIR, BUILD_TIMEOUT_S, "Java build")
    return [str(JAVA_DIR / "build" / "ortserve_example")]


BUILDERS = {"node": _build_node, "cpp": _build_cpp, "go": _build_go, "java": _build_java}


@pytest.fixture(scope="module", params=list(BUILDERS))
def client_cmd(request: pytest.FixtureRequest) -> list[str]:
    """The command (without arguments) of one built example client."""
    return BUILDERS[request.param]()


class Server:
    def __init__(self, address: str, model_path: Path) -> None:
        self.address = address
        self.model_path = model_path


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _log_tail(log: Path) -> str:
    try:
        return log.read_text(errors="replace")[-4000:]
    except OSError:
        return ""


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """A real ortserve server on an ephemeral port with the `linear` model registered."""
    tmp = tmp_path_factory.mktemp("clients")
    port_file = tmp / "port"
    log = tmp / "server.log"
    cmd = [
        sys.executable, "-m", "ortserve", "serve",
        "--host", "127.0.0.1",
        "--port", "0",
        "--port-file", str(port_file),
        "--metrics-port", "0",
        "--data-dir", str(tmp / "data"),
    ]  # fmt: skip
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    with log.open("wb") as log_fh:
        proc = subprocess.Popen(cmd, cwd=tmp, stdout=log_fh, stderr=subprocess.STDOUT, env=env)
    try:
        port = None
        deadline = time.monotonic() + SERVER_START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(f"ortserve serve exited with {proc.returncode} before binding:\n{_log_tail(log)}")
            try:
                text = port_file.read_text().strip()
            except OSError:
                text = ""
            if text.isdigit() and int(text) > 0:
                port = int(text)
                break
            time.sleep(0.1)
        if port is None:
            pytest.fail(
                f"ortserve serve wrote no port to {port_file} within {SERVER_START_TIMEOUT_S:.0f} s:\n"
                f"{_log_tail(log)}"
            )
        address = f"127.0.0.1:{port}"

        model_path = tmp / "linear.onnx"
        onnx_models.linear(model_path)
        register = [
            sys.executable, "-m", "ortserve", "models", "register", str(model_path),
            "--name", MODEL_NAME,
            "--server", address,
        ]  # fmt: skip
        reg = subprocess.run(
            register, cwd=tmp, capture_output=True, text=True, timeout=120, env=env, check=False
        )
        if reg.returncode != 0:
            pytest.fail(
                f"ortserve models register failed ({reg.returncode}):\n{reg.stdout}\n{reg.stderr}\n"
                f"--- server log ---\n{_log_tail(log)}"
            )
        yield Server(address, model_path)
    finally:
        _stop(proc)


def _input() -> np.ndarray:
    # Negative values on purpose: the CLIs must accept "--input -1.5,...".
    return np.random.default_rng(1).standard_normal((2, 16)).astype(np.float32)


def _fmt(values: np.ndarray) -> str:
    # repr of the exact double value of each float32: parses back to the same float32.
    return ",".join(repr(float(v)) for v in values.reshape(-1))


def _expected(model_path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(model_path), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: x})
    return np.asarray(y, dtype=np.float32)


def _check_output(label: str, got: dict[str, Any], expected: np.ndarray) -> None:
    assert got["shape"] == list(expected.shape), f"{label}: shape {got['shape']} != {list(expected.shape)}"
    data = np.asarray(got["data"], dtype=np.float32).reshape(got["shape"])
    np.testing.assert_allclose(data, expected, rtol=1e-5, atol=1e-6, err_msg=label)


def test_client_matches_onnxruntime(client_cmd: list[str], server: Server) -> None:
    x = _input()
    expected = _expected(server.model_path, x)
    cmd = [
        *client_cmd,
        "--server", server.address,
        "--model", MODEL_NAME,
        "--input", _fmt(x),
        "--shape", ",".join(str(d) for d in x.shape),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
    assert proc.returncode == 0, (
        f"{cmd[:2]} exited {proc.returncode}\nstdout:\n{proc.stdout}\nstderr:\n{proc.stderr}"
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one JSON line on stdout, got:\n{proc.stdout}"
    result = json.loads(lines[0])

    unary = result["unary"]
    assert isinstance(unary["version"], int) and unary["version"] >= 1
    _check_output("unary", unary, expected)

    stream = result["stream"]
    assert len(stream) == STREAM_MESSAGES
    assert [item["id"] for item in stream] == [str(i) for i in range(STREAM_MESSAGES)]
    for item in stream:
        _check_output(f"stream[{item['id']}]", item, expected)

    assert MODEL_NAME in result["models"]
