"""A headless Chromium to open run.py's --html page in: for tests/test_page.py and the screenshot
that bench/see_inside_screenshot.py takes.

The browser is Debian's chromium (/usr/bin/chromium; .ci/run installs it when absent), driven by
PyPI's playwright through its executable path: playwright's own browser download is not reachable
from the machines the tests run on. Each launch gets a fresh profile and none of the browser's own
background traffic, so every request the page sees is one the page made. If the browser cannot be
started, this raises: a test that needs it fails rather than skips.
"""
import contextlib
import tempfile
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextlib.contextmanager
def chromium(width: int = 1200, height: int = 800):
    """A browser context (playwright's BrowserContext) of Debian's Chromium, closed afterwards."""
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=CHROMIUM, headless=True, args=FLAGS,
            viewport={"width": width, "height": height})
        try:
            yield context
        finally:
            context.close()


def open_page(context, path: Path):
    """(page, requests, errors): `path` opened from disk in a new tab, every URL it requested, and
    every script error or console message it raised."""
    page, requests, errors = context.new_page(), [], []
    page.on("request", lambda request: requests.append(request.url))
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.on("console", lambda message: errors.append(message.text))
    page.goto(Path(path).resolve().as_uri())
    return page, requests, errors
