"""A real headless browser for the tests: Debian's chromium driven by playwright.

``open_page(url)`` yields a playwright ``Page`` in a fresh headless chromium (the system's
``/usr/bin/chromium``, never a downloaded browser), optionally with HTTP Basic credentials. Tests that
need it are skipped with a clear reason when chromium or playwright is missing, except under CI
(``CI`` set), where a missing browser is an error: ``.ci/install`` installs both.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from playwright.async_api import Page

CHROMIUM_CANDIDATES = ("/usr/bin/chromium", "/usr/bin/chromium-browser")


def chromium_binary() -> str | None:
    """The system chromium's path, or None when it is not installed."""
    for candidate in CHROMIUM_CANDIDATES:
        if os.access(candidate, os.X_OK):
            return candidate
    return shutil.which("chromium")


def require_browser() -> str:
    """Return chromium's path, or skip (fail under CI) when the browser or playwright is missing."""
    binary = chromium_binary()
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        binary = None
    if binary is None:
        reason = "a headless browser needs Debian's chromium and the playwright package (.ci/install)"
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    return binary


@contextlib.asynccontextmanager
async def open_page(
    url: str,
    *,
    credentials: tuple[str, str] | None = None,
    ignore_https_errors: bool = False,
    viewport: tuple[int, int] = (1400, 1000),
) -> AsyncIterator[Page]:
    """Open ``url`` in a fresh headless chromium and yield the page; the browser is closed afterwards."""
    binary = require_browser()
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        browser = await pw.chromium.launch(
            executable_path=binary, headless=True, args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]
        )
        try:
            context = await browser.new_context(
                http_credentials={"username": credentials[0], "password": credentials[1]} if credentials else None,
                ignore_https_errors=ignore_https_errors,
                viewport={"width": viewport[0], "height": viewport[1]},
            )
            page = await context.new_page()
            await page.goto(url)
            yield page
        finally:
            await browser.close()
