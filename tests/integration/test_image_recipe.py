"""The container image's recipe followed outside a container (this machine runs no container engine).

docker/install.sh is the one recipe: the Dockerfiles run it, and this test runs it the same way on the
build context that .dockerignore lets through, with the extras and the install location the CPU
Dockerfile names. It then starts the image's ENTRYPOINT + CMD from the fresh virtualenv with the
image's ENV and compose.yaml's ortserve environment (hosts, database, ports and folders pointed at
this test's), waits on the image's HEALTHCHECK command, and calls the server with the installed CLI.

The packages come from a wheelhouse kept between runs (`pip download` fetches only what is missing;
ORTSERVE_TEST_WHEELHOUSE moves it), then install with --no-index: the same resolution the image
makes from the index, without downloading ~70 MB every run.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import fields
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import numpy as np
import onnxruntime as ort
import pytest
import sqlalchemy as sa
import yaml

from ortserve.config import ServerConfig
from tests import onnx_models

REPO = Path(__file__).resolve().parents[2]
DOCKERFILES = (REPO / "docker" / "Dockerfile", REPO / "docker" / "Dockerfile.gpu")
COMPOSE = REPO / "docker" / "compose.yaml"
SETTINGS = {f.name for f in fields(ServerConfig)}
HAS_STORE_URL = "store_url" in SETTINGS
STORE_VARIABLES = (
    "ORTSERVE_STORE_URL",
    "AWS_ENDPOINT_URL",
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_REGION",
)
WHEELHOUSE = Path(
    os.environ.get("ORTSERVE_TEST_WHEELHOUSE", Path.home() / ".cache" / "ortserve-test-wheelhouse")
)
STEP_S = 300


# The Dockerfiles and the compose file, read as data.


def instructions(dockerfile: Path) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) in order; continuation lines joined, comments and pragmas dropped."""
    found: list[tuple[str, str]] = []
    pending = ""
    for line in dockerfile.read_text().splitlines():
        text = line.strip()
        if not text or text.startswith("#"):
            continue
        if text.endswith("\\"):
            pending += text[:-1] + " "
            continue
        keyword, _, rest = (pending + text).partition(" ")
        found.append((keyword.upper(), rest.strip()))
        pending = ""
    return found


def final_stage(dockerfile: Path) -> list[tuple[str, str]]:
    steps = instructions(dockerfile)
    last_from = max(i for i, (keyword, _) in enumerate(steps) if keyword == "FROM")
    return steps[last_from:]


def image_env(dockerfile: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in final_stage(dockerfile):
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))
    return env


def recipe_call(dockerfile: Path, action: str) -> list[str]:
    """The arguments the Dockerfile passes to `ortserve-install ACTION` (docker/install.sh)."""
    for keyword, rest in instructions(dockerfile):
        words = shlex.split(rest)
        if keyword == "RUN" and "ortserve-install" in words:
            args = words[words.index("ortserve-install") + 1 :]
            if args[0] == action:
                return args[1:]
    raise AssertionError(f"{dockerfile.name} does not run `ortserve-install {action}`")


def exec_form(dockerfile: Path, keyword: str) -> list[str]:
    [rest] = [rest for k, rest in final_stage(dockerfile) if k == keyword]
    if keyword == "HEALTHCHECK":
        rest = rest.split(" CMD ", 1)[1]
    command: list[str] = json.loads(rest)
    return command


def context_paths() -> list[str]:
    """The paths .dockerignore lets into the build context (it is an allowlist: `*`, then `!path`)."""
    lines = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()]
    patterns = [line for line in lines if line and not line.startswith("#")]
    assert patterns[0] == "*", ".dockerignore must start by leaving everything out"
    return [p[1:].rstrip("/") for p in patterns if p.startswith("!")]


def compose_env(service: str) -> dict[str, str]:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    env = services[service]["environment"]
    assert isinstance(env, dict), f"{service}: write the environment as a mapping"
    return {str(k): str(v) for k, v in env.items()}


# Checks that need no install.


def test_dockerfiles_copy_only_the_context_and_run_the_one_recipe() -> None:
    allowed = context_paths()
    for dockerfile in DOCKERFILES:
        for keyword, rest in instructions(dockerfile):
            words = shlex.split(rest)
            if keyword == "COPY" and not any(w.startswith("--from") for w in words):
                for source in [w for w in words if not w.startswith("--")][:-1]:
                    path = source.rstrip("/")
                    assert (REPO / path).exists(), f"{dockerfile.name}: COPY {source} does not exist"
                    assert any(path == a or path.startswith(a + "/") for a in allowed), (
                        f"{dockerfile.name}: COPY {source} is left out by .dockerignore"
                    )
        assert recipe_call(dockerfile, "wheel")[0] == "/src"
        assert exec_form(dockerfile, "ENTRYPOINT") == ["ortserve"]
        assert "ortserve health" in " ".join(exec_form(dockerfile, "HEALTHCHECK"))
    assert "cpu" in recipe_call(DOCKERFILES[0], "venv")[2].split(",")
    assert "gpu" in recipe_call(DOCKERFILES[1], "venv")[2].split(",")


def test_every_ortserve_variable_names_a_setting() -> None:
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    replicas = [name for name in services if name.startswith("ortserve")]
    assert len(replicas) == 2 and compose_env(replicas[0]) == compose_env(replicas[1])
    for source, env in [(d.name, image_env(d)) for d in DOCKERFILES] + [
        ("compose.yaml", compose_env(replicas[0]))
    ]:
        for key in env:
            if key.startswith("ORTSERVE_") and not (key == "ORTSERVE_STORE_URL" and not HAS_STORE_URL):
                assert key.removeprefix("ORTSERVE_").lower() in SETTINGS, f"{source}: {key} is not a setting"


# The recipe, installed and run.


def run(*args: str | Path, env: dict[str, str] | None = None, timeout: float = STEP_S) -> str:
    command = [str(a) for a in args]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    output = f"{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    assert proc.returncode == 0, f"{shlex.join(command)} failed ({proc.returncode}):\n{output}"
    return proc.stdout


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The CPU image's /opt/ortserve, made by docker/install.sh from the build context, on this machine."""
    root = tmp_path_factory.mktemp("image")
    context = root / "context"
    for path in context_paths():
        source = REPO / path
        if source.is_dir():
            shutil.copytree(source, context / path, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        else:
            (context / path).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, context / path)
    recipe = context / "docker" / "install.sh"
    env = {**os.environ, "PYTHON": sys.executable}
    wheels = root / "wheels"
    run("bash", recipe, "wheel", context, wheels, env=env)
    [wheel] = wheels.glob("ortserve-*.whl")
    _, _, extras = recipe_call(DOCKERFILES[0], "venv")
    # The wheelhouse holds the dependencies only: pip download would take a stale ortserve wheel of the
    # same name found there for this one.
    for stale in WHEELHOUSE.glob("ortserve-*"):
        stale.unlink()
    run(sys.executable, "-m", "pip", "download", "-q", "--dest", WHEELHOUSE, f"{wheel}[{extras}]")
    (WHEELHOUSE / wheel.name).unlink(missing_ok=True)
    venv = root / "opt-ortserve"
    offline = {**env, "PIP_NO_INDEX": "1", "PIP_FIND_LINKS": str(WHEELHOUSE)}
    run("bash", recipe, "venv", wheels, venv, extras, env=offline)
    return venv


@contextmanager
def s3_server(bucket: str, env: dict[str, str]) -> Iterator[tuple[str, Any]]:
    """moto's S3 server on loopback with the compose file's bucket, standing in for MinIO."""
    import boto3

    url = f"http://127.0.0.1:{free_port()}"
    port = url.rsplit(":", 1)[1]
    proc = subprocess.Popen(
        [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", port],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url, timeout=1).close()
                break
            except (urllib.error.URLError, ConnectionError):
                assert proc.poll() is None and time.monotonic() < deadline, "moto's S3 server did not start"
                time.sleep(0.1)
        s3 = boto3.client(
            "s3",
            endpoint_url=url,
            aws_access_key_id=env["AWS_ACCESS_KEY_ID"],
            aws_secret_access_key=env["AWS_SECRET_ACCESS_KEY"],
            region_name=env["AWS_REGION"],
        )
        s3.create_bucket(Bucket=bucket)
        yield url, s3
    finally:
        proc.terminate()
        proc.wait(10)


def container_env(venv: Path, tmp_path: Path, pg_url: str) -> dict[str, str]:
    """The CPU image's ENV plus compose's ortserve environment, pointed at this test's resources."""
    image_venv = recipe_call(DOCKERFILES[0], "venv")[1]
    env = {**image_env(DOCKERFILES[0]), **compose_env("ortserve-a")}
    (tmp_path / "data").mkdir()
    (tmp_path / "tmp").mkdir()
    overrides = {
        "PATH": env["PATH"].replace(image_venv, str(venv)).replace("$PATH", "/usr/local/bin:/usr/bin:/bin"),
        "HOME": str(tmp_path / "tmp"),
        "TMPDIR": str(tmp_path / "tmp"),
        "ORTSERVE_HOST": "127.0.0.1",
        "ORTSERVE_PORT": str(free_port()),
        "ORTSERVE_METRICS_PORT": str(free_port()),
        "ORTSERVE_DATA_DIR": str(tmp_path / "data"),
        "ORTSERVE_DB": pg_url,
    }
    missing = sorted(set(overrides) - set(env))
    assert not missing, f"the image and compose.yaml no longer set {missing}; update this test"
    assert urlsplit(env["ORTSERVE_DB"]).scheme.startswith("postgresql"), "the replicas share PostgreSQL"
    env.update(overrides)
    assert shutil.which("ortserve", path=env["PATH"]) == str(venv / "bin" / "ortserve")
    return env


def installed_settings(venv: Path) -> set[str]:
    code = "import dataclasses as d, ortserve.config as c; print(*[f.name for f in d.fields(c.ServerConfig)])"
    return set(run(venv / "bin" / "python", "-c", code).split())


def snapshot(tree: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for p in tree.rglob("*") if p.is_file()}


@pytest.mark.postgres
def test_installed_image_serves_with_the_compose_environment(
    installed: Path, tmp_path: Path, pg_url: str
) -> None:
    env = container_env(installed, tmp_path, pg_url)
    if "store_url" not in installed_settings(installed):
        _without_store(env)
        _serve_and_call(installed, env, tmp_path, pg_url)
        return
    store = urlsplit(env["ORTSERVE_STORE_URL"])
    with s3_server(store.netloc, env) as (endpoint, s3):
        env["AWS_ENDPOINT_URL"] = endpoint
        _serve_and_call(installed, env, tmp_path, pg_url)
        listed = s3.list_objects_v2(Bucket=store.netloc, Prefix=store.path.strip("/") + "/")
        assert listed.get("KeyCount", 0) >= 1, "the model's bytes did not reach the S3 store"


def _without_store(env: dict[str, str]) -> None:
    for key in STORE_VARIABLES:
        env.pop(key, None)
    warnings.warn(
        "the installed ortserve has no store_url setting yet: ran without compose.yaml's ORTSERVE_STORE_URL "
        "and AWS_* variables (the file store in the data dir); the S3 part of the recipe is untested",
        stacklevel=2,
    )


def _serve_and_call(venv: Path, env: dict[str, str], tmp_path: Path, pg_url: str) -> None:
    address = f"127.0.0.1:{env['ORTSERVE_PORT']}"
    before = snapshot(venv)
    entrypoint = exec_form(DOCKERFILES[0], "ENTRYPOINT") + exec_form(DOCKERFILES[0], "CMD")
    log = tmp_path / "server.log"
    with log.open("w") as out:
        server = subprocess.Popen(entrypoint, env=env, cwd=env["ORTSERVE_DATA_DIR"], stdout=out, stderr=out)
    try:
        _wait_healthy(server, env, log)
        model = tmp_path / "linear.onnx"
        onnx_models.linear(model)
        registered = run(
            "ortserve", "models", "register", model, "--name", "linear", "--server", address, env=env
        )
        assert "registered linear version 1 (ready)" in registered
        x = np.arange(32, dtype=np.float32).reshape(2, 16) / 10
        out = json.loads(
            run("ortserve", "predict", "linear", "--server", address, "--input", f"x={x.tolist()}", env=env)
        )
        expected = ort.InferenceSession(str(model)).run(None, {"x": x})[0]
        np.testing.assert_allclose(np.array(out["outputs"]["y"], np.float32), expected, rtol=1e-5)
        assert "linear\t1:ready" in run("ortserve", "models", "list", "--server", address, env=env)
        run("ortserve", "health", "--server", address, "--model", "linear", env=env)
        metrics = urllib.request.urlopen(
            f"http://127.0.0.1:{env['ORTSERVE_METRICS_PORT']}/metrics", timeout=10
        )
        assert b"ortserve_" in metrics.read()
    finally:
        server.send_signal(signal.SIGTERM)
        code = server.wait(30)
    assert code == 0, log.read_text()[-4000:]
    engine = sa.create_engine(pg_url)
    with engine.connect() as conn:  # the registry is the compose file's PostgreSQL, not SQLite in /data
        assert conn.execute(sa.text("SELECT name FROM models")).scalars().all() == ["linear"]
    engine.dispose()
    assert not list((tmp_path / "data").glob("*.db")), "a SQLite registry appeared in the data dir"
    assert snapshot(venv) == before, "the server wrote into its install (the image's root is read-only)"


def _wait_healthy(server: subprocess.Popen[bytes], env: dict[str, str], log: Path) -> None:
    """Run the image's HEALTHCHECK command until it passes (60 s at most)."""
    check = exec_form(DOCKERFILES[0], "HEALTHCHECK")
    deadline = time.monotonic() + 60
    while subprocess.run(check, env=env, capture_output=True, timeout=30, check=False).returncode != 0:
        if server.poll() is not None or time.monotonic() > deadline:
            server.kill()
            pytest.fail(f"the entry point never became healthy:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)
