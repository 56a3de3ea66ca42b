"""The console in a real browser (headless Chromium) against a real server: pages render the
registry, a promote through the page moves live traffic, tokens and cross-site posts are refused,
registry strings are escaped, and a screenshot of each page is saved."""

from __future__ import annotations

import asyncio
import html
from pathlib import Path

import grpc
import numpy as np
import pytest
from aiohttp import web
from playwright.async_api import BrowserContext, Dialog, Page

from ortserve.client.aio import AsyncClient
from ortserve.records import TrafficEntry
from tests.console.conftest import (
    ADMIN_NAME,
    ADMIN_SECRET,
    INFER_NAME,
    INFER_SECRET,
    XSS,
    Console,
    screenshot,
    sign_in,
)

X = {"x": np.ones((2, 16), np.float32)}


def production(console: Console) -> int:
    return {a.name: a.version for a in console.server.parts.control.registry.aliases("linear")}["production"]


def accept_dialogs(page: Page) -> list[str]:
    """Accept every confirm dialog; the list collects their messages."""
    messages: list[str] = []

    async def accept(dialog: Dialog) -> None:
        messages.append(dialog.message)
        await dialog.accept()

    page.on("dialog", accept)
    return messages


async def cell(page: Page, model: str, version: int, column: int) -> str:
    row = page.locator(f"section[data-model='{model}'] tr[data-version='{version}'] td")
    return (await row.nth(column).inner_text()).strip()


async def test_pages_render_the_registry_and_each_is_saved_as_a_screenshot(
    console: Console, context: BrowserContext, sdk: AsyncClient, tmp_path: Path
) -> None:
    shots = tmp_path / "screenshots"
    page = await context.new_page()
    await page.goto(f"{console.url}/")
    assert page.url == f"{console.url}/signin"  # tokens are configured: nothing without one
    await screenshot(page, shots, "signin")
    assert await sign_in(page, console, ADMIN_SECRET) == 200
    assert page.url == f"{console.url}/"

    # A canary with 10% of the traffic, a shadow of v2 compared against what v1 serves, and traffic.
    control = console.server.parts.control
    await control.set_traffic(
        "linear", [TrafficEntry("production", 90), TrafficEntry("2", 10)], False, "test"
    )
    await control.set_shadow("linear", "2", 1.0, "test")
    await sdk.predict("add", {"a": np.ones((1, 4), np.float32), "b": np.ones((1, 4), np.float32)})
    served = [(await sdk.predict("linear", X)).version for _ in range(40)]
    shadows = console.server.parts.core.shadows
    for _ in range(500):  # shadow copies run in the background
        if "linear" in shadows and shadows["linear"].compared >= served.count(1):
            break
        await asyncio.sleep(0.01)
    assert shadows["linear"].compared == served.count(1) > 0
    await page.reload()

    assert await page.locator("section.model h2").all_inner_texts() == ["add", "linear", "untrusted"]
    assert await cell(page, "linear", 1, 0) == "v1"
    assert await cell(page, "linear", 1, 1) == "ready"
    assert await cell(page, "linear", 1, 2) == "CPUExecutionProvider"
    assert (await cell(page, "linear", 1, 3)).endswith(("KiB", "MiB"))
    assert await cell(page, "linear", 1, 4) == "production"
    assert float(await cell(page, "linear", 1, 5)) > 0  # requests per second over the window
    assert (await cell(page, "linear", 1, 6)).endswith(" ms")  # p99
    assert await cell(page, "linear", 2, 4) == "\u2013"  # no alias
    bar = page.locator("section[data-model='linear'] .split .segment")
    assert await bar.all_inner_texts() == ["production (v1) 90%", "v2 10%"]
    assert await page.locator("section[data-model='add'] .split").inner_text() == "latest (v1) 100%"
    await screenshot(page, shots, "models")

    await page.click("section[data-model='linear'] h2 a")
    assert page.url == f"{console.url}/models/linear"
    versions = page.locator("table.versions tbody tr")
    assert await versions.count() == 2
    assert "production=90 2=10" in await page.locator("section.traffic").inner_text()
    shadow = await page.locator("table.shadow-stats").inner_text()
    assert f"Compared\t{served.count(1)}" in shadow and "Shadow version\tv2" in shadow
    assert "Argmax agreement" in shadow and "Max abs diff" in shadow
    assert "100% of requests are copied to 2" in await page.locator("section.shadow").inner_text()
    audit = await page.locator("section.audit tbody tr").all_inner_texts()
    assert [row.split("\t")[2] for row in audit[:2]] == ["shadow.set", "traffic.set"]
    assert any("register" in row for row in audit)
    await screenshot(page, shots, "model")
    assert sorted(p.name for p in shots.iterdir()) == ["model.png", "models.png", "signin.png"]


async def test_a_promote_through_the_page_moves_live_traffic_that_a_client_observes(
    console: Console, context: BrowserContext, sdk: AsyncClient
) -> None:
    assert {(await sdk.predict("linear", X)).version for _ in range(5)} == {1}
    watcher = await context.new_page()  # a second tab that shows live events
    page = await context.new_page()
    assert await sign_in(page, console, ADMIN_SECRET) == 200
    await watcher.goto(f"{console.url}/models/linear")
    await watcher.wait_for_selector("body[data-events=open]")

    await page.goto(f"{console.url}/models/linear")
    promote = "tr[data-version='2'] button[name=promote]"
    await page.click(promote)  # Playwright dismisses the confirm dialog: nothing is posted
    assert await page.locator("#banner").count() == 0
    assert production(console) == 1

    confirmed = accept_dialogs(page)
    await page.click(promote)
    await page.wait_for_selector("#banner")
    assert confirmed == ["Promote version 2 of linear to production?"]
    assert await page.inner_text("#banner") == "linear: production -> version 2 (was 1)"
    assert {(await sdk.predict("linear", X)).version for _ in range(5)} == {2}

    event = watcher.locator("#events li", has_text="alias")
    await event.wait_for()
    assert "production=2" in await event.inner_text()
    newest = await page.locator("section.audit tbody tr").first.inner_text()
    assert ADMIN_NAME in newest and "promote" in newest  # the token's name is the actor


async def test_an_action_answers_with_the_registry_error_text(
    console: Console, context: BrowserContext
) -> None:
    page = await context.new_page()
    assert await sign_in(page, console, ADMIN_SECRET) == 200
    await page.goto(f"{console.url}/models/linear")
    accept_dialogs(page)
    async with page.expect_navigation() as navigation:
        await page.click("tr[data-version='1'] button[name=retire]")  # production points at it
    response = await navigation.value
    assert response is not None and response.status == 409
    banner = await page.inner_text("#banner")
    async with AsyncClient(console.address, token=ADMIN_SECRET) as admin:
        with pytest.raises(grpc.RpcError) as refused:
            await admin.retire("linear", 1)
    assert refused.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert banner == f"FAILED_PRECONDITION: {refused.value.details()}"

    await page.fill("input[name=weights]", "1=ninety")
    async with page.expect_navigation() as navigation:
        await page.click("button[name=set-traffic]")
    assert (await navigation.value).status == 400  # type: ignore[union-attr]
    assert await page.inner_text("#banner") == (
        "INVALID_ARGUMENT: traffic weights are TARGET=WEIGHT with a whole number, got '1=ninety'"
    )


async def test_a_wrong_token_is_refused_and_no_token_is_ever_shown(
    console: Console, context: BrowserContext
) -> None:
    page = await context.new_page()
    assert await sign_in(page, console, "not-a-token") == 401
    assert await page.inner_text("#banner") == "UNAUTHENTICATED: the bearer token is not valid"
    await page.goto(f"{console.url}/models/linear")
    assert page.url == f"{console.url}/signin"

    # An infer token may look but not act: no action forms, no audit log, and a forged post is refused.
    assert await sign_in(page, console, INFER_SECRET) == 200
    await page.goto(f"{console.url}/models/linear")
    assert await page.locator("button[name=promote]").count() == 0
    assert "needs an admin token" in await page.locator("section.audit").inner_text()
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value")
    answer = await page.request.post(
        f"{console.url}/models/linear/promote",
        form={"csrf": csrf or "", "version": "2"},
        headers={"Origin": console.url},
    )
    assert answer.status == 403
    assert (
        f"PERMISSION_DENIED: /ortserve.api.v1.RegistryService/SetAlias needs a token with the admin "
        f"scope; token {INFER_NAME!r} has the infer scope"
    ) in html.unescape(await answer.text())
    assert production(console) == 1

    # The token is kept nowhere in the browser: not in the page, its cookies or its storage.
    await sign_in(page, console, ADMIN_SECRET)
    await page.goto(f"{console.url}/models/linear")
    stored = await page.evaluate("JSON.stringify([document.cookie, {...sessionStorage}, {...localStorage}])")
    cookies = await context.cookies()
    assert [(c["name"], c["httpOnly"], c["sameSite"]) for c in cookies] == [
        ("ortserve_console", True, "Strict")
    ]
    for secret in (ADMIN_SECRET, INFER_SECRET):
        assert secret not in await page.content()
        assert secret not in stored
        assert all(secret not in c["value"] for c in cookies)


async def test_registry_strings_are_escaped(console: Console, context: BrowserContext) -> None:
    page = await context.new_page()
    await sign_in(page, console, ADMIN_SECRET)
    for path in ("/", "/models/untrusted"):
        await page.goto(f"{console.url}{path}")
        assert await page.evaluate("window.__xss") is None
        assert await page.locator("#injected, main b").count() == 0
        assert await page.evaluate("document.scripts.length") == 1  # console.js only
    assert await page.inner_text("p.description") == XSS
    assert await page.locator(".version-description").all_inner_texts() == [XSS]
    assert await page.locator("span.label").first.inner_text() == f"note={XSS}"
    assert "&lt;script&gt;window.__xss = 1&lt;/script&gt;" in await page.content()
    assert "'note': '<script>window.__xss = 1</script>" in await page.locator("section.audit").inner_text()


async def test_cross_site_posts_are_refused(console: Console, context: BrowserContext) -> None:
    page = await context.new_page()
    await sign_in(page, console, ADMIN_SECRET)

    # Another site on this machine (same site for cookies: only the port differs) auto-posts a form.
    attack = (
        f'<form method="post" action="{console.url}/models/linear/promote">'
        '<input name="version" value="2"></form><script>document.forms[0].submit()</script>'
    )

    async def attacker(request: web.Request) -> web.Response:
        return web.Response(text=attack, content_type="text/html")

    app = web.Application()
    app.router.add_get("/", attacker)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    try:
        async with page.expect_navigation(url=f"{console.url}/models/linear/promote") as navigation:
            await page.goto(f"http://127.0.0.1:{runner.addresses[0][1]}/")
        response = await navigation.value
    finally:
        await runner.cleanup()
    assert response is not None and response.status == 403
    assert "PERMISSION_DENIED: cross-site request refused" in await page.inner_text("#error")
    assert production(console) == 1

    # With this session's own CSRF token but a foreign Origin, or from this origin without the token:
    # refused; with both, the same post goes through.
    await page.goto(f"{console.url}/models/linear")
    csrf = await page.locator("input[name=csrf]").first.get_attribute("value") or ""
    url = f"{console.url}/models/linear/promote"
    cases = [
        ({"csrf": csrf, "version": "2"}, "http://evil.example", "it comes from 'http://evil.example'"),
        ({"version": "2"}, console.url, "CSRF token is missing or stale"),
        ({"csrf": "0" * 64, "version": "2"}, console.url, "CSRF token is missing or stale"),
    ]
    for form, origin, reason in cases:
        answer = await page.request.post(url, form=form, headers={"Origin": origin})
        assert answer.status == 403, form
        assert reason in html.unescape(await answer.text())
        assert production(console) == 1
    answer = await page.request.post(
        url, form={"csrf": csrf, "version": "2"}, headers={"Origin": console.url}
    )
    assert answer.status == 200
    assert production(console) == 2
