"""The web console in a real browser: Debian's Chromium, headless, driven by Playwright.

One hub and two agents for the module (truck-1 env=prod takes firmware, truck-2
env=dev); each test logs in a user of its own (a TOTP code works once per user). The
browser trusts the hub's web certificate by its public key (Chromium's
--ignore-certificate-errors-spki-list), as it would trust DATA/web/ca.crt once
installed; nothing else is relaxed. Screenshots go to docs/img (docs/web.md).
"""

from __future__ import annotations

import json
import os
import pwd
import re
import select
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from browserkit import HINT, chromium_path, launch
from fwkit import signed_bundle
from helpers import PASSWORD, SERIAL_ROLE, Cluster, current_totp, free_port, wait_for
from playwright.sync_api import expect

from firmware_tools.keys import write_key_pair

ME = pwd.getpwuid(os.geteuid()).pw_name
IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
HOOK = '#!/bin/sh\necho "$REMOTELER_FW_VERSION" > "$REMOTELER_FW_SLOT/hook-ran"\n'
_users = iter(range(1000))


def _chromium() -> str:
    path = chromium_path()
    if path is None:
        pytest.fail(HINT)
    return path


@pytest.fixture(scope="module")
def serial_pty() -> Iterator[tuple[int, str]]:
    """The device's serial port: the agent gets the pty's slave, the test holds the master."""
    master, slave = os.openpty()
    try:
        yield master, os.ttyname(slave)
    finally:
        os.close(master)
        os.close(slave)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory, serial_pty: tuple[int, str]) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("webui"), free_port())
    try:
        c.start_hub()
        role = c.root / "serial-role.toml"
        role.write_text(SERIAL_ROLE)
        c.tctl("create", "-f", str(role))
        key = c.root / "fw.key"
        write_key_pair(key)
        c.tctl("firmware", "trust", f"{key}.pub")
        c.start_agent(
            "truck-1", "env=prod,site=berlin,board=rpi4", None, "--firmware-key", f"{key}.pub"
        )
        c.start_agent(
            "truck-2",
            "env=dev,site=paris",
            None,
            "--serial-port",
            serial_pty[1],
            "--heartbeat-interval",
            "1",
        )
        wait_for(lambda: c.node_online("truck-1") and c.node_online("truck-2"), what="agents")
        yield c
    finally:
        c.stop()


@pytest.fixture(scope="module")
def browser(hub: Cluster) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        b = launch(pw, hub.data, _chromium())
        try:
            yield b
        finally:
            b.close()


def _url(hub: Cluster, path: str = "/web/") -> str:
    return f"https://localhost:{hub.hub_port}{path}"


def _user(hub: Cluster, admin: bool = True, roles: str | None = None) -> str:
    name = f"web{next(_users)}"
    hub.add_user(name, [ME], roles=roles or ("access,editor" if admin else "access"))
    return name


@pytest.fixture
def page(hub: Cluster, browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1280, "height": 800})
    p = context.new_page()
    p.set_default_timeout(30_000)
    errors: list[str] = []
    p.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
    try:
        yield p
    finally:
        context.close()
    csp = [e for e in errors if "Content Security Policy" in e]
    assert not csp, csp  # nothing the page needs is blocked by its own policy


def _login(page: Any, hub: Cluster, user: str) -> None:
    page.goto(_url(hub))
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=otp]", current_totp())
    page.click("#login button[type=submit]")
    page.wait_for_selector("#fleet tbody tr")


def test_login_with_password_and_totp_shows_the_fleet(hub: Cluster, page: Any) -> None:
    user = _user(hub)
    page.goto(_url(hub))
    page.fill("input[name=user]", user)
    page.fill("input[name=password]", "wrong password")
    page.fill("input[name=otp]", "123456")
    page.click("#login button[type=submit]")
    expect(page.locator("#login-error")).to_contain_text("login failed")
    page.fill("input[name=password]", PASSWORD)
    page.fill("input[name=otp]", current_totp())
    page.click("#login button[type=submit]")
    page.wait_for_selector("#fleet tbody tr")
    names = page.locator("#fleet tbody tr td:first-child").all_inner_texts()
    assert names == ["truck-1", "truck-2"]
    assert "2 of 2 nodes match · 2 online" in page.inner_text("#fleet-summary")
    cookies = page.context.cookies()
    session = next(c for c in cookies if c["name"] == "__Host-remoteler-session")
    assert session["httpOnly"] and session["secure"] and session["sameSite"] == "Strict"
    page.screenshot(path=str(IMG / "web-fleet.png"))


def test_the_fleet_filters_by_label(hub: Cluster, page: Any) -> None:
    _login(page, hub, _user(hub, admin=False))
    page.fill("#label-filter", "env=prod")
    page.click("#fleet-filters button[type=submit]")
    expect(page.locator("#fleet-summary")).to_contain_text("1 of 2 nodes match")
    assert page.locator("#fleet tbody tr td:first-child").all_inner_texts() == ["truck-1"]
    assert "label=env%3Dprod" in page.url


def _terminal_text(page: Any) -> str:
    return str(page.inner_text("#terminal .xterm-rows"))


def test_terminal_runs_a_shell_and_shows_the_exit_then_replays(hub: Cluster, page: Any) -> None:
    _login(page, hub, _user(hub))
    page.click("text=truck-2")
    page.wait_for_selector("#open-terminal:not([disabled])")
    page.click("#open-terminal")
    page.wait_for_selector("#terminal .xterm-rows")
    expect(page.locator("#terminal .xterm-rows")).to_have_text(re.compile(r"\S"))
    page.keyboard.type("echo h''i\n")
    hi = page.locator("#terminal .xterm-rows > div").filter(has_text=re.compile(r"^\s*hi\s*$"))
    expect(hi.first).to_be_visible()
    page.screenshot(path=str(IMG / "web-terminal.png"))
    page.keyboard.type("exit 3\n")
    page.wait_for_selector("#terminal[data-ended]")
    assert page.get_attribute("#terminal", "data-ended") == "session ended (exit status 3)"
    assert "session ended (exit status 3)" in _terminal_text(page)
    # the device recorded it; the audit page links to the playback
    page.click("[data-nav=audit]")
    page.fill("#audit-type", "session.start")
    page.fill("#audit-node", "truck-2")
    page.click("#audit-filters button[type=submit]")
    link = page.locator("#audit tbody tr td a").first
    link.wait_for()
    link.click()
    page.wait_for_selector("#player .xterm-rows")
    page.select_option("#speed", "16")
    page.click("#play")
    page.wait_for_selector("#player[data-done]", timeout=60_000)
    rows = page.locator("#player .xterm-rows > div").all_inner_texts()
    assert any(r.strip() == "hi" for r in rows), rows
    page.screenshot(path=str(IMG / "web-playback.png"))


def test_a_lock_ends_an_open_web_terminal_with_its_message(hub: Cluster, page: Any) -> None:
    _login(page, hub, _user(hub))
    page.goto(_url(hub, "/web/node/truck-2"))
    page.wait_for_selector("#open-terminal:not([disabled])")
    page.click("#open-terminal")
    expect(page.locator("#terminal .xterm-rows")).to_have_text(re.compile(r"\S"))
    other = page.context.new_page()
    other.goto(_url(hub, "/web/ops"))
    other.wait_for_selector("#lock-form")
    other.select_option("#lock-form select[name=kind]", "node")
    other.fill("#lock-form input[name=target]", "truck-2")
    other.fill("#lock-form input[name=message]", "truck-2 is in the workshop")
    other.fill("#lock-form input[name=ttl]", "10m")
    other.click("#lock-form button[type=submit]")
    other.wait_for_selector("#locks tr[data-lock]")
    other.screenshot(path=str(IMG / "web-ops.png"), full_page=True)
    try:
        page.wait_for_selector("#terminal[data-ended]", timeout=30_000)
        assert "truck-2 is in the workshop" in _terminal_text(page)
    finally:
        for lock in hub.tctl_json("locks", "ls"):
            hub.tctl("unlock", lock["id"])
    events = hub.tctl_json("audit", "search", "--type", "web.action")
    assert any(e["fields"]["action"] == "admin.locks.add" and e["fields"]["ok"] for e in events)


def _shows(locator: Any, timeout: float = 3000) -> bool:
    try:
        locator.wait_for(timeout=timeout)
    except Exception:  # playwright's TimeoutError
        return False
    return True


def _read_until(fd: int, marker: bytes, timeout: float = 20.0) -> bytes:
    got, deadline = b"", time.monotonic() + timeout
    while marker not in got:
        ready, _, _ = select.select([fd], [], [], max(0.0, deadline - time.monotonic()))
        if not ready:
            raise AssertionError(f"no {marker!r} within {timeout}s; got {got[-300:]!r}")
        got += os.read(fd, 65536)
    return got


def test_the_serial_console_in_the_browser_follows_the_role(
    hub: Cluster, page: Any, serial_pty: tuple[int, str]
) -> None:
    master, port = serial_pty
    _login(page, hub, _user(hub, roles="access,serial"))
    button = page.locator(f"button.serial[data-port='{port}']")
    wait_for(  # the ports come with the agent's heartbeat
        lambda: page.goto(_url(hub, "/web/node/truck-2")) and _shows(button),
        timeout=30,
        interval=1,
        what="serial port on the node page",
    )
    button.click()
    expect(page.locator("#terminal .xterm-rows")).to_be_visible()
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("at 115200 baud, read-write")
    os.write(master, b"U-Boot 2024.01\r\n=> ")
    expect(page.locator("#terminal .xterm-rows")).to_contain_text("U-Boot 2024.01")
    page.locator("#terminal .xterm-helper-textarea").press_sequentially("printenv\r")
    assert b"printenv" in _read_until(master, b"printenv")
    page.screenshot(path=str(IMG / "web-serial.png"))
    page.goto(_url(hub, "/web/"))  # leave: the console closes
    page.context.clear_cookies()
    _login(page, hub, _user(hub, admin=False))  # 'access' only: no serial_console
    page.goto(_url(hub, "/web/node/truck-2"))
    page.locator(f"button.serial[data-port='{port}']").click()
    page.wait_for_selector("#terminal[data-ended]")
    assert "permission serial_console" in _terminal_text(page)


def test_a_rollout_shows_its_progress_until_done(hub: Cluster, page: Any) -> None:
    bundle = signed_bundle(hub.root, hub.root / "fw.key", "2.0.0", HOOK, 200 * 1024)
    out = hub.tctl_json(
        "firmware", "push", str(bundle), "--nodes", "env=prod", "--rate", "100KiB/s"
    )
    _login(page, hub, _user(hub))
    page.goto(_url(hub, "/web/ops"))
    row = f"#rollouts [data-rollout='{out['id']}']"
    page.wait_for_selector(row)
    page.wait_for_selector(
        f"{row}[data-state=done] tr[data-node=truck-1][data-state=installed]", timeout=60_000
    )
    assert page.get_attribute(f"{row} tr[data-node=truck-1] progress", "value") == "100"
    page.screenshot(path=str(IMG / "web-rollout.png"), full_page=True)
    # the fleet view shows the version the roll-out installed, and its slot
    cell = page.locator("#fleet tr[data-node=truck-1] td").nth(5)
    wait_for(
        lambda: page.goto(_url(hub)) and cell.inner_text().startswith("2.0.0 ("),
        timeout=30,
        interval=2,
        what="firmware in the fleet view",
    )


FETCH = """async ([url, method, headers]) => {
    const r = await fetch(url, {method, headers, credentials: "same-origin",
                                body: method === "POST" ? "{}" : undefined});
    return [r.status, await r.text()];
}"""


def test_users_and_roles_are_managed_from_the_console(hub: Cluster, page: Any) -> None:
    _login(page, hub, _user(hub))
    page.goto(_url(hub, "/web/ops"))
    page.fill("#user-form input[name=name]", "newtech")
    page.fill("#user-form input[name=logins]", ME)
    page.click("#user-form button[type=submit]")
    expect(page.locator("#invite-command")).to_contain_text("--user newtech --invite ")
    expect(page.locator("#user-list tr[data-user=newtech]")).to_contain_text("access")
    role = 'kind = "role"\nname = "ops"\n[allow]\nlogins = ["pi"]\nnode_labels = { env = "prod" }\n'
    page.fill("#role-text", role)
    page.click("#role-form button[type=submit]")
    expect(page.locator("#role-list")).to_contain_text("env=prod")
    page.once("dialog", lambda d: d.accept())
    page.click("#user-list tr[data-user=newtech] button.remove")
    expect(page.locator("#user-list tr[data-user=newtech]")).to_have_count(0)
    assert "newtech" not in [u["name"] for u in hub.tctl_json("users", "ls")]
    assert any(r["name"] == "ops" for r in hub.tctl_json("get", "roles"))


def test_requests_without_csrf_token_or_cookie_are_refused(hub: Cluster, page: Any) -> None:
    """The page's own fetch (its cookie goes along) without the CSRF header; then
    with the cookie left out."""
    _login(page, hub, _user(hub))
    url = "/web/api/call/admin.locks.ls"
    json_type = {"Content-Type": "application/json"}
    status, body = page.evaluate(FETCH, [url, "POST", json_type])
    assert status == 403 and "CSRF" in body
    no_cookie = """async (url) => (await fetch(url, {credentials: "omit"})).status"""
    status = page.evaluate(no_cookie, "/web/api/nodes")
    assert status == 401
    token = json.loads(page.evaluate(FETCH, ["/web/api/me", "GET", {}])[1])["csrf"]
    status, _ = page.evaluate(FETCH, [url, "POST", {**json_type, "X-CSRF-Token": token}])
    assert status == 200
