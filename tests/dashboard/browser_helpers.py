"""Headless Chromium for the dashboard's browser tests: Debian's chromium driven by Playwright's Python API
(never a downloaded browser), screenshots saved as test artifacts. A module of its own, not conftest.py."""

from __future__ import annotations

import os
import re
import time
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
# as root, without a sandbox; no background traffic (this machine has no outside network)
ARGS = [
    "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
    "--disable-sync", "--no-first-run", "--disable-quic", "--autoplay-policy=no-user-gesture-required",
]  # fmt: skip
REPO = Path(__file__).resolve().parents[2]


def artifacts_dir() -> Path:
    """Where screenshots go: ``SYNCTALK_TEST_ARTIFACTS`` or tests/artifacts/ (git-ignored)."""
    root = Path(os.environ.get("SYNCTALK_TEST_ARTIFACTS") or REPO / "tests" / "artifacts")
    folder = root / "dashboard"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def shot(page, name: str, full_page: bool = True) -> Path:
    path = artifacts_dir() / f"{re.sub(r'[^a-z0-9_-]+', '-', name.lower())}.png"
    page.screenshot(path=str(path), full_page=full_page)
    return path


def wait_js(page, expression: str, timeout_ms: float = 30_000, every_s: float = 0.25):
    """Poll a JS expression until it is truthy; returns its value. (Playwright's wait_for_function
    evaluates its predicate with eval, which the dashboard's Content-Security-Policy rightly forbids;
    page.evaluate goes through the debugger protocol, which CSP does not govern.)"""
    deadline = time.monotonic() + timeout_ms / 1000
    while True:
        value = page.evaluate(expression)
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout_ms / 1000:.0f} s: {expression}")
        time.sleep(every_s)


def sign_in(page, base_url: str, key: str) -> None:
    """Sign in the way a person does, with the keyboard only: the key field has focus, Enter submits."""
    page.goto(f"{base_url}/login")
    assert page.evaluate("document.activeElement.id") == "key", "the key field has focus"
    page.keyboard.type(key)
    page.keyboard.press("Enter")
    try:
        page.wait_for_url(f"{base_url}/", timeout=15_000)
    except Exception:
        shot(page, "sign-in-failed")
        raise AssertionError(
            f"sign-in did not reach the subjects page: {page.url}\n{page.content()[-1500:]}"
        ) from None
