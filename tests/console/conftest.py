"""A real ortserve with the console on its metrics port, a registry of a few models, and Debian's
Chromium driven headless by Playwright (nothing downloads a browser)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from PIL import Image
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

from ortserve.client.aio import AsyncClient
from ortserve.config import ServerConfig
from ortserve.server.app import OrtServer
from ortserve.server.auth import token_line
from tests import onnx_models

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ADMIN_SECRET = "console-admin-secret-4f1c"
INFER_SECRET = "console-infer-secret-9a7e"
ADMIN_NAME = "ops"
INFER_NAME = "infer-1"  # a plain secret is named <scope>-<n>
# A registry string that would run script, add an element or break out of an attribute if the console
# did not escape it.
XSS = "<script>window.__xss = 1</script><img src=x id=injected>\"'><b>bold</b>"
# Where the screenshots are also copied when set (docs/console refreshes them).
SCREENSHOTS_ENV = "ORTSERVE_CONSOLE_SCREENSHOTS"


@dataclass
class Console:
    server: OrtServer
    url: str
    address: str


def make_server(tmp_path: Path, **settings: object) -> OrtServer:
    """`linear` v1 (production) and v2, `add` v1, and `untrusted` v1 whose description and label
    are hostile."""
    config = ServerConfig(port=0, metrics_port=0, data_dir=str(tmp_path / "data"), **settings)  # type: ignore[arg-type]
    server = OrtServer(config)
    registry = server.parts.control.registry
    for seed in (0, 1):
        path = tmp_path / f"linear-{seed}.onnx"
        onnx_models.linear(path, seed=seed)
        description = f"scores, retrained with seed {seed}"
        registry.register_file(path, "linear", description=description, labels={"team": "risk"})
    onnx_models.add(tmp_path / "add.onnx")
    registry.register_file(tmp_path / "add.onnx", "add", description="adds two tensors")
    registry.register_file(tmp_path / "add.onnx", "untrusted", description=XSS, labels={"note": XSS})
    registry.set_alias("linear", "production", 1, actor="setup")
    return server


@pytest.fixture
async def console(tmp_path: Path) -> AsyncIterator[Console]:
    """Tokens configured: an admin token named `ops` (stored hashed) and an infer token."""
    server = make_server(
        tmp_path, admin_tokens=(token_line(ADMIN_NAME, ADMIN_SECRET),), infer_tokens=(INFER_SECRET,)
    )
    await server.start()
    yield Console(server, f"http://127.0.0.1:{server.metrics_port}", f"127.0.0.1:{server.port}")
    await server.stop(0)


@pytest.fixture
async def sdk(console: Console) -> AsyncIterator[AsyncClient]:
    async with AsyncClient(console.address, token=INFER_SECRET) as client:
        yield client


@pytest.fixture
def chromium() -> Path:
    """Debian's Chromium; missing, the browser tests are skipped (failed under CI, which installs it)."""
    if not CHROMIUM.exists():
        message = f"{CHROMIUM} is missing (apt-get install chromium; scripts/install_client_toolchains.sh)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return CHROMIUM


@pytest.fixture
async def browser(chromium: Path) -> AsyncIterator[Browser]:
    async with async_playwright() as playwright:
        launched = await playwright.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS)
        yield launched
        await launched.close()


@pytest.fixture
async def context(browser: Browser) -> AsyncIterator[BrowserContext]:
    """A fresh browser profile (its own cookies), 1280 pixels wide."""
    fresh = await browser.new_context(viewport={"width": 1280, "height": 800})
    fresh.set_default_timeout(15_000)
    yield fresh
    await fresh.close()


async def sign_in(page: Page, console: Console, secret: str) -> int:
    """Sign in through the form; the HTTP status of the answer (after the redirect, if any)."""
    await page.goto(f"{console.url}/signin")
    await page.fill("input[name=token]", secret)
    async with page.expect_navigation() as navigation:
        await page.click("form.signin button[type=submit]")
    response = await navigation.value
    assert response is not None
    return response.status


async def screenshot(page: Page, folder: Path, name: str) -> Path:
    """Save the whole page as `name`.png under `folder` (and under $ORTSERVE_CONSOLE_SCREENSHOTS)."""
    path = folder / f"{name}.png"
    await page.screenshot(path=str(path), full_page=True)  # creates the folder
    await asyncio.to_thread(_check_and_copy, path)
    return path


def _check_and_copy(path: Path) -> None:
    with Image.open(path) as image:
        assert image.width == 1280 and image.height >= 600, image.size
        extra = os.environ.get(SCREENSHOTS_ENV)
        if extra:  # 256 colours: a third of the size, for the README
            Path(extra).mkdir(parents=True, exist_ok=True)
            image.convert("RGB").quantize(256).save(Path(extra) / path.name, optimize=True)
