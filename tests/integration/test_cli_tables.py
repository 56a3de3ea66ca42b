"""`ortserve models list | show | audit` against a real server: plain tables for scripts, rich tables
on a terminal (a real pseudo-terminal), JSON with --json, errors as one line."""

from __future__ import annotations

import asyncio
import json
import os
import select
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
from structlog.testing import capture_logs

from ortserve import cli
from ortserve.client import AsyncClient
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from tests import onnx_models

HOSTILE = "scores \x1b]0;owned\x07 [bold]payments[/bold]"
TERMINAL_S = 60.0


@pytest.fixture
async def fraud(tmp_path: Path) -> AsyncIterator[str]:
    """A server with model `fraud`: v1 production, v2 shadowed (3 requests compared), then 80/20 traffic."""
    server = OrtServer(ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data")))
    try:
        address = f"127.0.0.1:{await server.start()}"
        async with AsyncClient(address, retry=None) as client:
            for seed in (1, 2):
                onnx_models.linear(tmp_path / f"v{seed}.onnx", seed=seed)
                await client.register(tmp_path / f"v{seed}.onnx", "fraud", description=HOSTILE)
            await client.promote("fraud", 1)
            await client.set_shadow("fraud", 2, 1.0)
            for _ in range(3):  # to production (v1), each copied to v2
                await client.predict("fraud", {"x": np.ones((1, 16), np.float32)})
            await _shadowed(client, 3)
            await client.set_traffic("fraud", {1: 80, 2: 20})
        yield address
    finally:
        await server.stop(0)


async def _shadowed(client: AsyncClient, requests: int) -> None:
    """Wait until the shadow comparisons (run after each answer) have all been counted."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10.0
    while loop.time() < deadline:
        shadow = (await client.get_model("fraud")).shadow
        if shadow is not None and shadow.compared + shadow.errors >= requests:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"shadow comparisons did not reach {requests} in 10 s")


async def _cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    capsys.readouterr()
    with capture_logs():  # the in-process server logs to the same stdout
        code = await asyncio.to_thread(cli.main, list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _blocks(text: str) -> dict[str, list[list[str]]]:
    """Plain output: title -> rows (header first), each split at tabs."""
    found = {}
    for block in text.strip().split("\n\n"):
        title, *lines = block.splitlines()
        found[title.removeprefix("# ")] = [line.split("\t") for line in lines]
    return found


async def test_list_and_show_print_plain_tables_off_a_terminal(
    fraud: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = await _cli(capsys, "models", "list", "--server", fraud)
    assert code == 0
    assert _blocks(out)["models"] == [
        ["MODEL", "VERSIONS", "ALIASES", "TRAFFIC", "DESCRIPTION"],
        [
            "fraud",
            "1:ready, 2:ready",
            "production=1",
            "1=80 2=20",
            "scores \\x1b]0;owned\\x07 [bold]payments[/bold]",
        ],
    ]
    code, out, _ = await _cli(capsys, "models", "show", "fraud", "--server", fraud)
    assert code == 0 and "\x1b" not in out
    blocks = _blocks(out)
    assert list(blocks) == [
        "model fraud",
        "aliases",
        "traffic policy",
        "shadow comparison (on the server that answered)",
        "versions",
    ]
    assert blocks["traffic policy"][1:] == [
        ["1", "80", "################.... 80%"],
        ["2", "20", "####................ 20%"],
    ]
    shadow = dict(zip(*blocks["shadow comparison (on the server that answered)"], strict=True))
    assert (shadow["TARGET"], shadow["VERSION"], shadow["COMPARED"], shadow["ERRORS"]) == ("2", "2", "3", "0")
    versions = [dict(zip(blocks["versions"][0], row, strict=True)) for row in blocks["versions"][1:]]
    assert [(v["VERSION"], v["STATE"], v["PROVIDER"], v["INPUTS"], v["OUTPUTS"]) for v in versions] == [
        ("1", "ready", "CPU", "x FP32 [N, 16]", "y FP32 [N, 4]"),
        ("2", "ready", "CPU", "x FP32 [N, 16]", "y FP32 [N, 4]"),
    ]


async def test_json_documents(fraud: str, capsys: pytest.CaptureFixture[str]) -> None:
    _, out, _ = await _cli(capsys, "models", "show", "fraud", "--server", fraud, "--json")
    model = json.loads(out)
    assert model["description"] == HOSTILE  # JSON keeps the value; escaping is the reader's
    assert model["shadow"]["compared"] == 3 and model["traffic"]["weights"] == {"1": 80, "2": 20}
    assert model["versions"][1]["inputs"] == [{"name": "x", "dtype": "FP32", "shape": [-1, 16]}]
    _, out, _ = await _cli(capsys, "models", "list", "--server", fraud, "--json")
    assert json.loads(out) == [model]
    _, out, _ = await _cli(capsys, "models", "audit", "fraud", "--server", fraud, "--json")
    actions = [entry["action"] for entry in json.loads(out)]
    assert actions == ["traffic.set", "shadow.set", "promote", "register", "register"]


async def test_audit_prints_a_table(fraud: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = await _cli(capsys, "models", "audit", "fraud", "--server", fraud)
    rows = _blocks(out)["audit log"]
    assert code == 0 and rows[0] == ["TIME (UTC)", "ACTION", "MODEL", "VERSION", "ACTOR", "CHANGE"]
    assert [row[1] for row in rows[1:]] == ["traffic.set", "shadow.set", "promote", "register", "register"]
    assert rows[2][5].endswith('shadow_share=1.0, shadow_target="2", sticky=false')


async def test_errors_are_one_line_naming_the_cause(fraud: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, err = await _cli(capsys, "models", "show", "nope", "--server", fraud)
    assert (code, out, err) == (1, "", "error: NOT_FOUND: model 'nope' is not registered\n")
    code, out, err = await _cli(capsys, "models", "list", "--server", "127.0.0.1:1")
    assert (code, out) == (1, "") and err.startswith("error: UNAVAILABLE: ") and err.count("\n") == 1
    code, out, _ = await _cli(capsys, "models", "audit", "nope", "--server", fraud)
    assert (code, out.splitlines()[1:]) == (0, ["TIME (UTC)\tACTION\tMODEL\tVERSION\tACTOR\tCHANGE"])


def _on_terminal(*argv: str) -> str:
    """Run `ortserve ARGV` with its standard output on a pseudo-terminal; what it wrote there."""
    env = {k: v for k, v in os.environ.items() if k not in ("NO_COLOR", "FORCE_COLOR")}
    master, slave = os.openpty()
    proc = subprocess.Popen(
        [sys.executable, "-m", "ortserve", *argv],
        stdout=slave,
        stderr=subprocess.PIPE,
        env={**env, "COLUMNS": "250", "TERM": "xterm-256color"},
    )
    os.close(slave)
    chunks = []
    try:
        while select.select([master], [], [], TERMINAL_S)[0]:
            try:
                data = os.read(master, 65536)
            except OSError:  # EIO: the command closed the terminal
                break
            if not data:
                break
            chunks.append(data)
        else:
            proc.kill()
    finally:
        os.close(master)
        assert proc.wait(TERMINAL_S) == 0, proc.stderr.read() if proc.stderr else ""
    return b"".join(chunks).decode()


async def test_a_terminal_gets_rich_tables(fraud: str) -> None:
    text = await asyncio.to_thread(_on_terminal, "models", "show", "fraud", "--server", fraud)
    assert "╭" in text and "██" in text and "x FP32 [N, 16]" in text
    assert "\x1b[" in text  # colours
    assert "\x1b]0;owned" not in text and "\\x1b]0;owned\\x07 [bold]payments[/bold]" in text
