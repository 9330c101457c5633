"""Real-browser fixtures: the app served on loopback, driven by Debian's Chromium.

Playwright drives the system's `chromium` (Playwright's own browser download needs a
network that CI does not have); `scripts/test-suite` installs Debian's package when it
runs as root and `chromium` is missing. Without Chromium (or without Playwright) the
browser tests are skipped, saying why, except under `CI=true`, where they fail: CI must
never pass without having run them.

The project keeps one conftest.py, so a test module takes these fixtures in by name:

    from tests.support import browser as support
    browser = support.browser
    live_site = support.live_site
"""

from __future__ import annotations

import os
import shutil
import threading
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts" / "screenshots"
"""Screenshots of every page a browser test saw (gitignored; CI may keep them)."""

DOCS_SCREENSHOTS = ROOT / "docs" / "screenshots"
"""Screenshots the README shows: written when missing, or again with UPDATE_ENV=1."""

UPDATE_ENV = "CAREPULSE_UPDATE_SCREENSHOTS"

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    # Offline machines: without these Chromium keeps trying to reach Google's services.
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]

PHONE: dict[str, Any] = {
    "viewport": {"width": 375, "height": 667},
    "device_scale_factor": 1,
    "is_mobile": True,
    "has_touch": True,
}
"""A small phone (iPhone SE/8 size), as most care workers will answer."""

TIMEOUT_MS = 5_000
"""Every page of the app answers on loopback in milliseconds: fail fast, not after 30 s."""


def _unavailable(reason: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run in CI)", pytrace=False)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    """Headless Chromium (the system's `chromium`) under Playwright."""
    executable = shutil.which("chromium")
    if executable is None:
        _unavailable(
            "browser tests need Chromium: no `chromium` on PATH (scripts/test-suite installs "
            "Debian's chromium package when run as root; or: sudo apt-get install chromium)"
        )
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        _unavailable("browser tests need Playwright: run `make test` to install the test extra")
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=executable, headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield chromium
        finally:
            chromium.close()


_TOUCH_PAGES: weakref.WeakSet[Any] = weakref.WeakSet()


def new_page(browser: Any, **context_options: Any) -> Any:
    """A page in a fresh context (its own cookies), with short timeouts.

    Close it with `page.context.close()`.
    """
    context = browser.new_context(**context_options)
    context.set_default_timeout(TIMEOUT_MS)
    context.set_default_navigation_timeout(TIMEOUT_MS)
    page = context.new_page()
    if context_options.get("has_touch"):
        _TOUCH_PAGES.add(page)
    return page


def press(locator: Any) -> None:
    """Tap `locator` on a touch screen, click it otherwise: as the person would."""
    if locator.page in _TOUCH_PAGES:
        locator.tap()
    else:
        locator.click()


@dataclass
class LiveSite:
    """The app served over HTTP on 127.0.0.1; `site("/path")` is the page's URL."""

    app: Any
    url: str

    def __call__(self, path: str) -> str:
        return self.url + path


def _not_ready(environ: Any, start_response: Any) -> list[bytes]:
    start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
    return [b"starting"]


@pytest.fixture
def live_site(engine: Any, database_url: str, tmp_path: Path) -> Iterator[LiveSite]:
    """The app on the test database and the embedded defaults (development phone and
    mailbox), served by a threaded werkzeug server on a free loopback port."""
    from werkzeug.serving import make_server

    from tests.support.web import make_app

    # Port 0: the system picks a free port, and nothing else can take it before we serve.
    server = make_server("127.0.0.1", 0, _not_ready, threaded=True)
    url = f"http://127.0.0.1:{server.server_port}"
    app = make_app(database_url, tmp_path, PUBLIC_BASE_URL=url)
    server.app = app
    thread = threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    try:
        yield LiveSite(app, url)
    finally:
        server.shutdown()
        thread.join(timeout=5)
        server.server_close()
        app.extensions["carepulse.engine"].dispose()


def screenshot(page: Any, name: str) -> Path:
    """Save a full-page screenshot as a test artefact: test-artifacts/screenshots/<name>.png."""
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True, animations="disabled", caret="hide")
    return path


def docs_screenshot(page: Any, name: str, *, full_page: bool = True) -> Path | None:
    """Save docs/screenshots/<name>.png (for the README) when it is missing or when
    CAREPULSE_UPDATE_SCREENSHOTS=1, so an ordinary test run leaves the committed files as
    they are."""
    path = DOCS_SCREENSHOTS / f"{name}.png"
    if path.exists() and os.environ.get(UPDATE_ENV) != "1":
        return None
    path.parent.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(path), full_page=full_page, animations="disabled", caret="hide")
    return path


SERIOUS = ("serious", "critical")


def axe_report(violations: list[dict[str, Any]]) -> str:
    """Every violation, with the elements and what axe says about each."""
    lines = []
    for v in violations:
        lines.append(f"- {v['id']} ({v['impact']}): {v['help']} <{v['helpUrl']}>")
        for node in v["nodes"]:
            lines.append(f"    at {', '.join(map(str, node['target']))}: {node['html'][:200]}")
            for check in node.get("any", []) + node.get("all", []) + node.get("none", []):
                lines.append(f"      * {check['message']}")
    return "\n".join(lines)


def axe_scan(page: Any) -> list[dict[str, Any]]:
    """axe-core's violations on the page as it is now (axe's script is bundled: offline)."""
    from axe_playwright_python.sync_playwright import Axe

    return Axe().run(page).response["violations"]


def expect(target: Any) -> Any:
    """Playwright's auto-waiting `expect`, imported only once a browser test runs (so that the
    module still imports, and skips, where Playwright is not installed)."""
    from playwright.sync_api import expect as playwright_expect

    return playwright_expect(target)
