"""A headless Chromium to open run.py's --html page in: for tests/test_page.py and the screenshot
that bench/see_inside_screenshot.py takes.

The browser is the first Chromium-family one found (BROWSER: on PATH as chromium, chromium-browser,
google-chrome, chrome or msedge, else where Chrome or Edge install themselves; on Debian that is
/usr/bin/chromium, which .ci/run installs when absent), driven by PyPI's playwright through its
executable path: playwright's own browser download is not reachable from the machines the tests run
on. Each launch gets a fresh profile and none of the browser's own background traffic, so every
request the page sees is one the page made. Where no browser is found the page tests skip, saying
NO_BROWSER; a browser that is found but cannot be started raises: a test that needs it fails.
"""
import contextlib
import shutil
import tempfile
from pathlib import Path

NAMES = ("chromium", "chromium-browser", "google-chrome", "chrome", "msedge")
# Where the usual installers put Chrome and Edge without adding them to PATH (macOS, Windows).
INSTALLED = ("/Applications/Google Chrome.app/Contents/MacOS/Google Chrome",
             "/Applications/Chromium.app/Contents/MacOS/Chromium",
             r"C:\Program Files\Google\Chrome\Application\chrome.exe",
             r"C:\Program Files (x86)\Microsoft\Edge\Application\msedge.exe")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync"]


def find_browser() -> str | None:
    """The path of the first Chromium-family browser found, or None."""
    for name in NAMES:
        if found := shutil.which(name):
            return found
    return next((path for path in INSTALLED if Path(path).is_file()), None)


BROWSER = find_browser()
NO_BROWSER = (f"no Chromium-family browser found (none of {', '.join(NAMES)} on PATH): "
              f"install Chromium to run the page in a browser")


@contextlib.contextmanager
def chromium(width: int = 1200, height: int = 800):
    """A browser context (playwright's BrowserContext) of BROWSER, closed afterwards."""
    if BROWSER is None:
        raise RuntimeError(NO_BROWSER)
    from playwright.sync_api import sync_playwright
    with tempfile.TemporaryDirectory(prefix="chromium-profile-") as profile, sync_playwright() as driver:
        context = driver.chromium.launch_persistent_context(
            profile, executable_path=BROWSER, headless=True, args=FLAGS,
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
