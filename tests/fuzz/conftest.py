"""One real server per test module, a health check after every test, and the count of cases tried."""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator

import pytest
import pytest_asyncio

from tests.fuzz import server
from tests.fuzz.server import CASES, OUTCOMES, FuzzServer

# Set to a file path to get the case counts as JSON as well.
REPORT_ENV = "ORTSERVE_FUZZ_REPORT"


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def fuzz_server(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[FuzzServer]:
    running = await server.start(tmp_path_factory.mktemp("fuzz"))
    try:
        yield running
    finally:
        await server.stop(running)


@pytest_asyncio.fixture(loop_scope="module")
async def healthy_after(fuzz_server: FuzzServer) -> AsyncIterator[FuzzServer]:
    """The server; once the test is done, a good request must succeed and health be SERVING."""
    yield fuzz_server
    await fuzz_server.assert_healthy()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if not CASES:
        return
    terminalreporter.section("fuzz cases tried")
    for kind, count in sorted(CASES.items()):
        answers = sorted((o, n) for (k, o), n in OUTCOMES.items() if k == kind)
        detail = ", ".join(f"{o} {n}" for o, n in answers)
        terminalreporter.write_line(f"{count:8d}  {kind}" + (f"  ({detail})" if detail else ""))
    terminalreporter.write_line(f"{sum(CASES.values()):8d}  total")
    path = os.environ.get(REPORT_ENV)
    if path:
        report = {
            "cases": dict(sorted(CASES.items())),
            "answers": {f"{k}: {o}": n for (k, o), n in sorted(OUTCOMES.items())},
        }
        with open(path, "w") as out:
            json.dump(report, out, indent=2)
