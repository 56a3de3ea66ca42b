"""`ortserve bench --processes`: the load from several spawned processes against a real server."""

from __future__ import annotations

import asyncio
import json

import pytest

from ortserve import cli
from tests.integration.conftest import Running


@pytest.mark.parametrize("protocol", ["oip", "ortserve"])
async def test_bench_from_two_processes_merges_their_runs(
    running: Running, protocol: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "linear", "--server", running.address, "--protocol", protocol]
    argv += ["--processes", "2", "-c", "4", "-n", "200", "--warmup", "0", "--json"]
    # in a thread: the server under load runs on this test's event loop
    status = await asyncio.to_thread(cli.main, argv)
    out, err = capsys.readouterr()
    assert status == 0, err
    result = json.loads(out.splitlines()[-1])  # the server logs to stdout too
    assert (result["requests"], result["errors"], result["processes"]) == (200, 0, 2)
    assert result["concurrency"] == 4 and result["requests_target"] == 200
    # two processes, two channels: each connection carried its half of the count
    assert [p["requests"] for p in result["by_process"]] == [100, 100]
    assert [p["concurrency"] for p in result["by_process"]] == [2, 2]
    start, end = result["window_unix"]
    assert start <= end


async def test_bench_fails_with_a_failing_load_process(
    running: Running, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["bench", "no-such-model", "--server", running.address, "--processes", "2", "-c", "2", "-n", "2"]
    status = await asyncio.to_thread(cli.main, argv)
    _, err = capsys.readouterr()
    assert status == 1
    assert err.startswith("error: load process ") and "NOT_FOUND" in err, err
