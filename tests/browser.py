"""Headless Chromium (the Debian `chromium` package, driven by Playwright) and a local web server, for page tests."""
from __future__ import annotations

import functools
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Iterator

from playwright.sync_api import Browser, Page, sync_playwright

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]


@contextmanager
def chromium() -> Iterator[Browser]:
    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} not found: install it with `apt-get update && apt-get install -y chromium`")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
        try:
            yield browser
        finally:
            browser.close()


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format, *args):
        pass


@contextmanager
def serve_directory(root: Path) -> Iterator[str]:
    """Serve `root` on 127.0.0.1 at an ephemeral port from a background thread; yields the base URL."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_QuietHandler, directory=str(root)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@dataclass
class PageProblems:
    """What went wrong while a page loaded: console errors, uncaught exceptions, failed or erroring requests."""
    console_errors: list[str] = field(default_factory=list)
    page_errors: list[str] = field(default_factory=list)
    failed_requests: list[str] = field(default_factory=list)
    requested_urls: list[str] = field(default_factory=list)

    def all(self) -> list[str]:
        return self.console_errors + self.page_errors + self.failed_requests


def watch(page: Page) -> PageProblems:
    problems = PageProblems()
    page.on("console", lambda m: m.type == "error" and problems.console_errors.append(f"console: {m.text}"))
    page.on("pageerror", lambda e: problems.page_errors.append(f"uncaught: {e}"))
    page.on("requestfailed", lambda r: problems.failed_requests.append(f"failed: {r.url} ({r.failure})"))
    page.on("request", lambda r: problems.requested_urls.append(r.url))
    page.on("response", lambda r: r.status >= 400 and problems.failed_requests.append(f"HTTP {r.status}: {r.url}"))
    return problems


def load_all_images(page: Page, timeout_ms: int = 5000) -> list[str]:
    """Make lazy images load (switch them to eager), wait until every <img> is done; returns the src of each that
    failed to decode (naturalWidth 0)."""
    page.evaluate("document.querySelectorAll('img').forEach(img => { img.loading = 'eager'; })")
    page.wait_for_function("[...document.images].every(img => img.complete)", timeout=timeout_ms)
    return page.evaluate("[...document.images].filter(img => img.naturalWidth === 0).map(img => img.src)")
