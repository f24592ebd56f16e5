"""What the SSO browser tests share (tests/e2e/test_sso_*.py): Chromium for the module,
a fresh browser context per test, and ``tsh login --auth ... --browser none`` run as a
real process whose printed URL the browser then opens."""

from __future__ import annotations

import queue
import subprocess
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from browserkit import HINT, chromium_path, launch
from helpers import BIN, Cluster, stop_process


def sso_browser(hub_data: Path) -> Iterator[Any]:
    """Body of a module-scoped ``browser`` fixture."""
    from playwright.sync_api import sync_playwright

    path = chromium_path()
    if path is None:
        pytest.fail(HINT)
    with sync_playwright() as pw:
        browser = launch(pw, hub_data, path)
        try:
            yield browser
        finally:
            browser.close()


def sso_page(browser: Any) -> Iterator[Any]:
    """Body of a ``page`` fixture: a new context (no cookies of earlier tests)."""
    context = browser.new_context(viewport={"width": 1100, "height": 700})
    page = context.new_page()
    page.set_default_timeout(20_000)
    try:
        yield page
    finally:
        context.close()


@dataclass
class TshLogin:
    proc: subprocess.Popen[str]
    url: str
    lines: queue.Queue[str]

    def finish(self) -> tuple[int, str, str]:
        """(exit code, stdout, stderr) once tsh ends (30 s at most)."""
        assert self.proc.stdout is not None
        try:
            self.proc.wait(timeout=30)
            out = self.proc.stdout.read()
        finally:
            stop_process(self.proc)
        time.sleep(0.2)  # the reader thread drains stderr
        err = ""
        while not self.lines.empty():
            err += self.lines.get_nowait()
        return self.proc.returncode, out, err

    def succeeded(self, page: Any, hub: Cluster, user: str, target: str, word: str) -> str:
        """The browser shows the landing page, tsh ends logged in as ``user``, and
        ``tsh ssh TARGET echo WORD`` works with the new certificates; tsh's output."""
        from playwright.sync_api import expect

        expect(page.locator("h1")).to_have_text("Logged in")
        code, out, err = self.finish()
        assert code == 0, err
        assert f"Logged in as {user}" in out
        ssh = hub.tsh("ssh", target, "echo", word)
        assert ssh.returncode == 0, ssh.stderr
        assert ssh.stdout.strip() == word
        return out


def start_tsh_login(hub: Cluster, *extra: str) -> TshLogin:
    """``tsh login --browser none [extra]`` against ``hub``, up to the URL it prints."""
    proc = subprocess.Popen(
        [
            str(BIN / "tsh"),
            "login",
            "--proxy",
            hub.addr,
            "--ca-pin",
            hub.ca_pin(),
            "--browser",
            "none",
            *extra,
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=hub.env(),
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    said = ""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            line = lines.get(timeout=1)
        except queue.Empty:
            continue
        said += line
        if line.strip().startswith("https://"):
            return TshLogin(proc, line.strip(), lines)
    stop_process(proc)
    raise AssertionError(f"tsh printed no login URL: {said}")
