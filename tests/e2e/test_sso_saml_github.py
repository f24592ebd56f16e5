"""Single sign-on with SAML 2.0 and GitHub through a real hub, in Debian's Chromium.

SAML: a real IdP (tests/idp/saml_idp.mjs, samlify) on 127.0.0.1, found by its metadata
URL; ``tsh login --auth`` and the web console's login; an answer whose signed attribute
was changed on its way to the hub is refused. GitHub: its endpoints cannot be reached
from here, so the connector talks to a local stand-in that serves GitHub's documented
OAuth and REST shapes (tests/ghstand.py), run on a thread of this test.

One hub, one agent and one browser for the module.
"""

from __future__ import annotations

import asyncio
import base64
import os
import pwd
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

import pytest
from ghstand import GitHubStandIn
from helpers import Cluster, free_port, wait_for
from playwright.sync_api import expect
from samlkit import saml_idp
from ssokit import sso_browser, sso_page, start_tsh_login

ME = pwd.getpwuid(os.geteuid()).pw_name
ROLE = """\
kind = "role"
name = "field-tech"
[allow]
logins = ["{login}"]
node_labels = {{ "*" = "*" }}
"""
SAML = """\
kind = "saml"
name = "okta"
display = "Okta (SAML)"
idp_metadata_url = "{metadata}"
attributes_to_roles = [{{ name = "groups", value = "techs", roles = ["field-tech"] }}]
"""
GITHUB = """\
kind = "github"
name = "github"
display = "GitHub"
client_id = "{client_id}"
client_secret_file = "gh-secret"
endpoint_url = "{endpoint}"
teams_to_roles = [{{ organization = "acme", team = "field", roles = ["field-tech"] }}]
"""


class StandInThread:
    """The GitHub stand-in on its own event loop, for a synchronous test."""

    def __init__(self, users: dict[str, Any], callback_url: str) -> None:
        self.users, self.callback_url = users, callback_url
        self.ready = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.stand: GitHubStandIn | None = None
        self._stop: asyncio.Event | None = None
        self.thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        async with GitHubStandIn(self.users, callback_url=self.callback_url) as stand:
            self.stand = stand
            self.ready.set()
            await self._stop.wait()

    def __enter__(self) -> GitHubStandIn:
        self.thread.start()
        if not self.ready.wait(20) or self.stand is None:
            raise AssertionError("the GitHub stand-in did not start")
        return self.stand

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self.thread.join(20)
        self.loop.close()


class Rig:
    def __init__(self, hub: Cluster) -> None:
        self.hub = hub

    @property
    def web(self) -> str:
        return f"https://127.0.0.1:{self.hub.hub_port}"


@pytest.fixture(scope="module")
def rig(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    root = tmp_path_factory.mktemp("sso-saml-gh")
    hub = Cluster(root, free_port())
    saml_users = {
        "carol": {"groups": ["techs"], "email": "carol@example.com"},
        "dave": {"groups": ["sales"]},
    }
    gh_users = {"erin": {"id": 501, "email": None, "name": "Erin", "teams": ["acme/field"]}}
    try:
        hub.start_hub()
        callback = f"https://127.0.0.1:{hub.hub_port}/web/sso/callback"
        with saml_idp(root, saml_users) as idp, StandInThread(gh_users, callback) as gh:
            (root / "role.toml").write_text(ROLE.format(login=ME))
            hub.tctl("create", "-f", str(root / "role.toml"))
            (root / "okta.toml").write_text(SAML.format(metadata=idp.metadata_url))
            out = hub.tctl("create", "-f", str(root / "okta.toml")).stdout
            assert "/web/sso/acs" in out
            (root / "gh-secret").write_text(gh.client_secret)
            (root / "github.toml").write_text(
                GITHUB.format(client_id=gh.client_id, endpoint=gh.url)
            )
            hub.tctl("create", "-f", str(root / "github.toml"))
            hub.start_agent("van-7", "env=field")
            wait_for(lambda: hub.node_online("van-7"), what="agent")
            yield Rig(hub)
    finally:
        hub.stop()


@pytest.fixture(scope="module")
def browser(rig: Rig) -> Iterator[Any]:
    yield from sso_browser(rig.hub.data)


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    yield from sso_page(browser)


def _saml_sign_in(page: Any, user: str) -> None:
    page.locator('input[name="username"]').fill(user)
    page.locator('button[type="submit"]', has_text="Sign in").click()


def test_tsh_login_through_the_saml_idp_maps_attributes_to_roles(rig: Rig, page: Any) -> None:
    login = start_tsh_login(rig.hub, "--auth", "okta")
    page.goto(login.url)
    _saml_sign_in(page, "carol")
    login.succeeded(page, rig.hub, "carol", f"{ME}@van-7", "saml-works")
    users = {u["name"]: u for u in rig.hub.tctl_json("users", "ls")}
    assert users["carol"]["connector"] == "okta"
    assert users["carol"]["roles"] == ["field-tech"]


def test_a_saml_answer_changed_on_its_way_is_refused(rig: Rig, page: Any) -> None:
    def tamper(route: Any) -> None:
        form = parse_qs(route.request.post_data or "")
        xml = base64.b64decode(form["SAMLResponse"][0]).decode()
        assert ">techs<" in xml
        forged = base64.b64encode(xml.replace(">techs<", ">admin<").encode()).decode()
        body = f"SAMLResponse={_q(forged)}&RelayState={_q(form['RelayState'][0])}"
        route.continue_(post_data=body)

    page.route("**/web/sso/acs", tamper)
    login = start_tsh_login(rig.hub, "--auth", "okta")
    page.goto(login.url)
    _saml_sign_in(page, "carol")
    expect(page.locator("h1")).to_have_text("Login refused")
    code, _, err = login.finish()
    assert code != 0
    assert "signature" in err


def test_web_console_login_through_saml_and_an_unmapped_user(rig: Rig, page: Any) -> None:
    page.goto(f"{rig.web}/web/")
    expect(page.locator("a[data-sso]", has_text="GitHub")).to_be_visible()
    page.screenshot(path=str(IMG / "sso-login-page.png"))
    page.locator("a[data-sso]", has_text="Okta (SAML)").click()
    _saml_sign_in(page, "carol")
    expect(page.locator("#who")).to_have_text("carol")
    page.context.clear_cookies()
    page.goto(f"{rig.web}/web/")
    page.locator("a[data-sso]", has_text="Okta (SAML)").click()
    _saml_sign_in(page, "dave")
    expect(page.locator("h1")).to_have_text("Login refused")
    expect(page.locator("body")).to_contain_text("groups: 'sales'")


def test_tsh_login_through_github_teams(rig: Rig, page: Any) -> None:
    login = start_tsh_login(rig.hub, "--auth", "github")
    page.goto(login.url)
    page.locator('input[name="login"]').fill("erin")
    page.locator("button", has_text="Authorize").click()
    login.succeeded(page, rig.hub, "erin", f"{ME}@van-7", "github-works")
    # the client secret never reaches a log
    secret = (rig.hub.root / "gh-secret").read_text()
    assert secret not in rig.hub.all_logs()


def _q(text: str) -> str:
    from urllib.parse import quote

    return quote(text, safe="")


IMG = Path(__file__).resolve().parents[2] / "docs" / "img"
