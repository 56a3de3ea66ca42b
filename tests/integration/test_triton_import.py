"""`ortserve models import-triton DIR` against a real server: versions, batching and providers land in
the registry as the repository's config.pbtxt files say, and whatever cannot is listed."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from structlog.testing import capture_logs

from ortserve import cli
from ortserve.client import AsyncClient, Batching
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import triton_repos

X = np.ones((2, 16), np.float32)
CPU, CUDA, TRT = "CPUExecutionProvider", "CUDAExecutionProvider", "TensorrtExecutionProvider"


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, AsyncClient]]:
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data")))
    try:
        port = await server.start()
        async with AsyncClient(f"127.0.0.1:{port}", retry=None) as client:
            yield f"127.0.0.1:{port}", client
    finally:
        await server.stop(0)


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str]:
    """Run the command in a thread (its blocking client must not stall the in-process server)."""
    capsys.readouterr()
    with capture_logs():  # the in-process server's log lines would go to the same stdout
        code = await asyncio.to_thread(cli.main, list(argv))
    return code, capsys.readouterr().out


async def _import(
    capsys: pytest.CaptureFixture[str], repo: Path, address: str, *flags: str
) -> tuple[int, dict[str, Any]]:
    code, out = await _cli(
        capsys, "models", "import-triton", str(repo), "--server", address, "--json", *flags
    )
    report = json.loads(out)
    return code, {m["name"]: m for m in report["models"]}


async def test_dry_run_plans_and_registers_nothing(
    tmp_path: Path, served: tuple[str, AsyncClient], capsys: pytest.CaptureFixture[str]
) -> None:
    address, client = served
    repo = triton_repos.write_repository(tmp_path / "repo")
    code, models = await _import(capsys, repo, address, "--dry-run")
    assert code == 1  # broken/config.pbtxt cannot be read
    assert [v["action"] for v in models["latest"]["versions"]] == ["excluded", "excluded", "register"]
    assert models["dyn"]["batching"]["max_queue_size"] == 64
    assert await client.list_models() == []


async def test_import_registers_versions_with_batching_and_providers_once(
    tmp_path: Path, served: tuple[str, AsyncClient], capsys: pytest.CaptureFixture[str]
) -> None:
    address, client = served
    repo = triton_repos.write_repository(tmp_path / "repo")
    code, models = await _import(capsys, repo, address)
    assert code == 1
    assert models["broken"]["status"] == "error"
    assert models["broken"]["reason"].startswith(f"{repo / 'broken' / 'config.pbtxt'} is not a valid")
    assert {models[n]["status"] for n in ("ens", "py")} == {"skipped"}
    assert sorted(m.name for m in await client.list_models()) == [
        "dyn",
        "latest",
        "ov",
        "plain",
        "specific",
        "trt",
    ]

    dyn = await client.list_versions("dyn")
    assert [(v.version, v.labels["triton.version"]) for v in dyn] == [(1, "1"), (2, "2")]
    assert dyn[0].batching == Batching(8, 500, (4, 8), 64, 1)
    assert dyn[0].preferred_providers == [CPU]
    assert dyn[1].description == "imported from a Triton repository: dyn/2/model.onnx"
    (latest,) = await client.list_versions("latest")  # version_policy latest 1
    assert (latest.labels["triton.version"], latest.batching.max_batch_size) == ("3", 4)
    specific = await client.list_versions("specific")
    assert [v.labels["triton.version"] for v in specific] == ["1", "3"]
    assert specific[0].batching.max_batch_size == 0
    (trt,) = await client.list_versions("trt")
    assert (trt.preferred_providers, trt.batching.max_batch_size) == ([TRT, CUDA, CPU], 16)
    (plain,) = await client.list_versions("plain")
    assert (plain.preferred_providers, plain.batching.max_batch_size) == ([], None)
    # What the repository asked for serves: TensorRT and CUDA are absent here, so CPU answers.
    assert (await client.predict("trt", {"x": X})).provider == CPU
    assert (await client.predict("dyn", {"x": X})).version == 2
    assert (await client.predict("specific", {"x": X}, version=2)).outputs["y"].shape == (2, 4)
    assert {d["what"] for d in models["trt"]["not_carried_over"]} >= {"sequence_batching", "response_cache"}

    # Again, with one more version: nothing is registered twice.
    triton_repos.version(repo, "dyn", 3, seed=3)
    code, models = await _import(capsys, repo, address)
    assert code == 1
    assert [(v["action"], v["version"]) for v in models["dyn"]["versions"]] == [
        ("unchanged", 1),
        ("unchanged", 2),
        ("registered", 3),
    ]
    assert models["dyn"]["status"] == "imported" and models["trt"]["status"] == "unchanged"
    assert [v.version for v in await client.list_versions("dyn")] == [1, 2, 3]
    assert len(await client.list_versions("specific")) == 2


async def test_a_refused_version_is_reported_and_the_rest_imports(
    tmp_path: Path, served: tuple[str, AsyncClient], capsys: pytest.CaptureFixture[str]
) -> None:
    address, client = served
    repo = tmp_path / "repo"
    triton_repos.version(repo, "good", 1, seed=1)
    (repo / "good" / "2").mkdir()
    (repo / "good" / "2" / "model.onnx").write_bytes(b"\x08\x07garbage, not a protobuf")
    triton_repos.version(repo, "good", 3, seed=3)
    (repo / "good" / "config.pbtxt").write_text("version_policy { all { } }\n")
    code, out = await _cli(capsys, "models", "import-triton", str(repo), "--server", address)
    assert code == 1
    lines = out.splitlines()
    assert lines[:2] == [
        f"# Triton repository {repo}",
        "MODEL\tTRITON VERSION\tACTION\tVERSION\tBATCHING\tPROVIDERS\tDETAIL",
    ]
    rows = [line.split("\t") for line in lines[2:5]]
    assert [row[:4] for row in rows] == [["good", "1", "registered", "1"], ["good", "2", "failed", "-"],
                                         ["good", "3", "registered", "2"]]  # fmt: skip
    assert rows[1][6].startswith("INVALID_ARGUMENT: model bytes are not a valid ONNX model")
    assert lines[-1].startswith("2 version(s) registered, 0 unchanged, 1 failed")
    assert [v.labels["triton.version"] for v in await client.list_versions("good")] == ["1", "3"]


async def test_an_unreachable_server_is_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    repo = triton_repos.write_repository(tmp_path / "repo")
    code = await asyncio.to_thread(
        cli.main, ["models", "import-triton", str(repo), "--server", "127.0.0.1:1"]
    )
    err = capsys.readouterr().err
    assert code == 1 and err.startswith("error: UNAVAILABLE:") and err.count("\n") == 1
    code = await asyncio.to_thread(cli.main, ["models", "import-triton", str(tmp_path / "nope")])
    assert code == 2
    assert capsys.readouterr().err.strip() == (
        f"error: '{tmp_path / 'nope'}' is not a directory (expected a Triton model repository)"
    )
