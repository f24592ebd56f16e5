"""Single sign-on with OIDC against a real OpenID Provider (oidc-provider from npm, run
on 127.0.0.1 by tests/oidckit.py), driven in Debian's Chromium by Playwright.

One hub, one agent, one provider and one browser for the module. The provider's issuer
is a relay in front of it (tests/oidckit.py TokenRelay), which one test makes tamper
with the ID token. Users: alice (groups ops: mapped to role ops-ssh, whose logins come
from her ``logins`` claim) and mallory (groups interns: mapped to nothing).
"""

from __future__ import annotations

import os
import pwd
import time
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Cluster, free_port, wait_for
from oidckit import OIDCProvider, TokenRelay
from playwright.sync_api import expect
from ssokit import sso_browser, sso_page, start_tsh_login

ME = pwd.getpwuid(os.geteuid()).pw_name
SECRET = "oidc-client-secret-for-tests"
ROLE = """\
kind = "role"
name = "ops-ssh"
[allow]
logins = ["{{external.logins}}"]
node_labels = { env = "{{external.env}}" }
"""
CONNECTOR = """\
kind = "oidc"
name = "corp"
display = "Corp SSO"
issuer_url = "{issuer}"
client_id = "remoteler"
client_secret_file = "oidc-secret"
scopes = ["openid", "profile", "email", "groups"]
claims_to_roles = [{{ claim = "groups", value = "ops", roles = ["ops-ssh"] }}]
"""


class Rig:
    def __init__(self, hub: Cluster, provider: OIDCProvider, relay: TokenRelay) -> None:
        self.hub, self.provider, self.relay = hub, provider, relay

    @property
    def web(self) -> str:
        return f"https://127.0.0.1:{self.hub.hub_port}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("sso-oidc")
    hub = Cluster(root, free_port())
    relay = TokenRelay(target=0).start()
    provider = None
    try:
        hub.start_hub()
        provider = OIDCProvider.start(
            root / "idp",
            clients=[
                {
                    "client_id": "remoteler",
                    "client_secret": SECRET,
                    "redirect_uris": [f"https://127.0.0.1:{hub.hub_port}/web/sso/callback"],
                }
            ],
            users={
                "alice": {"groups": ["ops", "staff"], "logins": [ME], "env": ["lab"]},
                "mallory": {"groups": ["interns"], "logins": [ME], "env": ["lab"]},
            },
            issuer=f"http://127.0.0.1:{relay.port}",
        )
        relay.target = provider.port
        (root / "role.toml").write_text(ROLE)
        hub.tctl("create", "-f", str(root / "role.toml"))
        (root / "oidc-secret").write_text(SECRET + "\n")
        (root / "corp.toml").write_text(CONNECTOR.format(issuer=provider.issuer))
        out = hub.tctl("create", "-f", str(root / "corp.toml")).stdout
        assert "/web/sso/callback" in out
        hub.start_agent("lab-1", "env=lab")
        hub.start_agent("prod-1", "env=prod")
        wait_for(lambda: hub.node_online("lab-1") and hub.node_online("prod-1"), what="agents")
        yield Rig(hub, provider, relay)
    finally:
        hub.stop()
        if provider is not None:
            provider.stop()
        relay.stop()


@pytest.fixture(scope="module")
def browser(rig: Rig) -> Iterator[Any]:
    yield from sso_browser(rig.hub.data)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    yield from sso_page(browser)


def _provider_login(page: Any, user: str) -> None:
    """oidc-provider's own login and consent pages."""
    page.locator('input[name="login"]').fill(user)
    page.locator('input[name="password"]').fill("any-password")
    page.locator('button[type="submit"]').click()
    consent = page.locator('button[type="submit"]', has_text="Continue")
    consent.wait_for()
    consent.click()


def test_tsh_login_through_the_provider_then_ssh_with_the_mapped_role(rig: Rig, page: Any) -> None:
    login = start_tsh_login(rig.hub, "--auth", "corp")
    assert login.url.startswith(f"{rig.web}/web/sso/start/")
    page.goto(login.url)
    _provider_login(page, "alice")
    out = login.succeeded(page, rig.hub, "alice", f"{ME}@lab-1", "sso-works")
    assert f"Logins:      {ME}" in out  # from her logins claim, through {{external.logins}}
    # the sealed answer never shows the certificates in the browser's URL
    assert "ssh-ed25519-cert" not in page.url and "BEGIN CERTIFICATE" not in page.url
    # {{external.env}} = lab: the prod node is not hers
    denied = rig.hub.tsh("ssh", f"{ME}@prod-1", "true")
    assert denied.returncode != 0
    assert "prod-1" in denied.stderr
    users = {u["name"]: u for u in rig.hub.tctl_json("users", "ls")}
    assert users["alice"]["connector"] == "corp"
    assert users["alice"]["roles"] == ["ops-ssh"]
    assert users["alice"]["expires"] > time.time()
    events = rig.hub.tctl_json("audit", "search", "--type", "user.login", "--user", "alice")
    assert any(e["fields"].get("method") == "sso:oidc" for e in events)


def test_a_user_no_claim_maps_is_refused_naming_the_values_seen(rig: Rig, page: Any) -> None:
    # the cluster's default connector: tsh login with no --auth uses it
    pref = rig.hub.root / "pref.toml"
    pref.write_text('kind = "auth_preference"\nconnector_name = "corp"\n')
    rig.hub.tctl("create", "-f", str(pref))
    try:
        login = start_tsh_login(rig.hub)
        page.goto(login.url)
        _provider_login(page, "mallory")
        expect(page.locator("h1")).to_have_text("Login refused")
        code, _, err = login.finish()
    finally:
        pref.write_text('kind = "auth_preference"\nconnector_name = "local"\n')
        rig.hub.tctl("create", "-f", str(pref))
    assert code != 0
    assert "no role is mapped for 'mallory'" in err
    assert "groups: 'interns'" in err
    assert len(err.strip().splitlines()[-1]) < 400
    assert "mallory" not in {u["name"] for u in rig.hub.tctl_json("users", "ls")}


def test_a_tampered_id_token_is_refused(rig: Rig, page: Any) -> None:
    rig.relay.tamper = True
    try:
        login = start_tsh_login(rig.hub, "--auth", "corp")
        page.goto(login.url)
        _provider_login(page, "alice")
        expect(page.locator("h1")).to_have_text("Login refused")
        code, _, err = login.finish()
    finally:
        rig.relay.tamper = False
    assert rig.relay.tampered >= 1
    assert code != 0
    assert "signature is not valid" in err


def test_web_console_login_through_the_provider_and_a_replayed_state(rig: Rig, page: Any) -> None:
    callbacks: list[str] = []
    page.on(
        "request",
        lambda r: callbacks.append(r.url) if "/web/sso/callback" in r.url else None,
    )
    page.goto(f"{rig.web}/web/")
    button = page.locator("a[data-sso]", has_text="Corp SSO")
    button.click()
    _provider_login(page, "alice")
    expect(page.locator("#who")).to_have_text("alice")
    expect(page.locator("table tbody tr", has_text="lab-1")).to_be_visible()
    page.screenshot(path=str(IMG / "sso-web-login.png"))
    # the same answer again: its state was used up
    assert callbacks, "the browser never came back to the hub"
    page.goto(callbacks[0])
    expect(page.locator("h1")).to_have_text("Login refused")
    expect(page.locator("body")).to_contain_text("finished already")


IMG = __import__("pathlib").Path(__file__).resolve().parents[2] / "docs" / "img"
