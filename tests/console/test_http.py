"""The HTTP port without a browser: /metrics beside the console, the settings that turn the console
and its actions on and off, security headers, errors from the error table, and live events."""

from __future__ import annotations

import asyncio
import html
import re
import socket
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from ortserve.server.app import OrtServer
from tests.console.conftest import make_server

CSRF = re.compile(r'<meta name="csrf-token" content="([0-9a-f]{64})">')


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe: keep cookies of an IP address host (127.0.0.1).
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


async def started(tmp_path: Path, **settings: object) -> tuple[OrtServer, str]:
    server = make_server(tmp_path, **settings)
    await server.start()
    return server, f"http://127.0.0.1:{server.metrics_port}"


async def page(http: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    async with http.get(url) as response:
        return response.status, await response.text()


async def post(
    http: aiohttp.ClientSession, base: str, path: str, host: str = "", **form: str
) -> tuple[int, str]:
    """Post like the console's own forms: this origin and the CSRF token of the session's page; `host`
    as the Host header, as a browser sends it for a page loaded through that name."""
    _, text = await page(http, f"{base}/")
    found = CSRF.search(text)
    assert found is not None
    data = {"csrf": found[1], **form}
    headers = {"Host": host, "Origin": f"http://{host}"} if host else {"Origin": base}
    async with http.post(f"{base}{path}", data=data, headers=headers) as response:
        return response.status, html.unescape(await response.text())


async def test_off_the_console_is_gone_and_metrics_stay(tmp_path: Path, http: aiohttp.ClientSession) -> None:
    server, base = await started(tmp_path, console=False)
    try:
        assert (await page(http, f"{base}/"))[0] == 404
        assert (await page(http, f"{base}/models/linear"))[0] == 404
        status, text = await page(http, f"{base}/metrics")
        assert status == 200
        assert "# TYPE ortserve_request_duration_seconds histogram" in text
        async with http.get(f"{base}/metrics", headers={"Accept": "application/openmetrics-text"}) as answer:
            assert answer.headers["Content-Type"].startswith("application/openmetrics-text")
            assert (await answer.text()).rstrip().endswith("# EOF")
    finally:
        await server.stop(0)


async def test_without_tokens_pages_are_open_and_actions_need_console_actions(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server, base = await started(tmp_path)
    try:
        status, text = await page(http, f"{base}/models/linear")
        assert status == 200
        assert "actions off" in text and 'name="promote"' not in text
        status, text = await post(http, base, "/models/linear/promote", version="2")
        assert status == 403
        assert "PERMISSION_DENIED: console actions are off" in text
        assert server.parts.control.pool.snapshot.aliases["linear"]["production"] == 1
    finally:
        await server.stop(0)


async def test_with_console_actions_the_audit_log_names_the_console_and_its_peer(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server, base = await started(tmp_path, console_actions=True)
    try:
        # A page reached through a host name could be a rebound one: without tokens, no action there.
        rebound = f"attacker.example:{server.metrics_port}"
        status, text = await post(http, base, "/models/linear/promote", host=rebound, version="2")
        assert status == 403
        assert "PERMISSION_DENIED: without tokens, console actions are taken only at an IP address" in text
        status, text = await post(http, base, "/models/linear/promote", version="2")
        assert status == 200, text
        assert "linear: production -> version 2 (was 1)" in text
        events = server.parts.control.registry.audit_events("linear", 1)
        assert (events[0].actor, events[0].action, events[0].version) == ("console@127.0.0.1", "promote", 2)
        status, text = await post(http, base, "/models/linear/shadow", target="1", share="lots")
        assert status == 400
        assert "INVALID_ARGUMENT: shadow share must be a number in (0, 1], got 'lots'" in text
        status, text = await post(http, base, "/models/nope/rollback")
        assert status == 404
        assert "NOT_FOUND: " in text and "'nope'" in text
        assert (await post(http, base, "/models/linear/explode"))[0] == 404
    finally:
        await server.stop(0)


async def test_pages_carry_security_headers_and_unknown_models_answer_not_found(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server, base = await started(tmp_path)
    try:
        async with http.get(f"{base}/models/missing") as response:
            assert response.status == 404
            assert "NOT_FOUND: model &#39;missing&#39; is not registered" in await response.text()
            headers = response.headers
        assert "script-src 'self'" in headers["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in headers["Content-Security-Policy"]
        assert headers["X-Frame-Options"] == "DENY"
        assert headers["X-Content-Type-Options"] == "nosniff"
        assert headers["Cache-Control"] == "no-store"
        cookie = response.cookies["ortserve_console"]
        assert cookie["httponly"] and cookie["samesite"] == "Strict" and cookie["path"] == "/"
    finally:
        await server.stop(0)


async def test_live_events_stream_a_models_changes_and_end_when_the_server_stops(
    tmp_path: Path, http: aiohttp.ClientSession
) -> None:
    server, base = await started(tmp_path)
    port = server.metrics_port
    stopped = False
    try:
        async with http.get(f"{base}/models/linear/events") as stream:
            assert stream.headers["Content-Type"] == "text/event-stream"
            bus = server.parts.control.pool.events
            for _ in range(500):  # the handler subscribes once the response has started
                if bus.subscribers:
                    break
                await asyncio.sleep(0.01)
            await server.parts.control.set_alias("add", "canary", 1, "test")  # another model: not sent
            await server.parts.control.set_alias("linear", "canary", 2, "test")
            line = await asyncio.wait_for(stream.content.readline(), 10)
            assert line.startswith(b"data: ")
            assert b'"kind": "alias"' in line and b'"model": "linear"' in line and b"canary=2" in line
            await asyncio.wait_for(server.stop(0), 10)
            stopped = True
            rest = await asyncio.wait_for(stream.content.read(), 10)  # ends: no hanging stream
            assert b'"model": "add"' not in rest
        assert bus.subscribers == 0
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(("127.0.0.1", port), timeout=5).close()
    finally:
        if not stopped:
            await server.stop(0)
