"""The GitHub connector (hub/sso/github.py) against the GitHub stand-in (tests/ghstand.py)
over real HTTP on 127.0.0.1, a browser's part played by aiohttp; its spec checks and
parsers without sockets."""

from __future__ import annotations

import datetime
import ipaddress
import json
import logging
import secrets
import ssl
import time
from collections.abc import AsyncIterator, Callable
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urljoin, urlsplit

import aiohttp
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from ghstand import GitHubStandIn
from hypothesis import given, settings
from hypothesis import strategies as st

from hub.sso.github import (
    GITHUB_KEYS,
    MAX_TEAM_PAGES,
    GitHubProvider,
    next_link,
    parse_github,
    parse_teams,
    parse_token,
    parse_user,
    pkce_challenge,
    teams_rules,
)
from hub.sso.provider import Pending, SSOError
from remoteler.errors import UsageError

CALLBACK = "https://hub.example.com/web/sso/callback"
ALICE_TEAMS = ["acme/admins", "acme/devs", "Acme/ops", "widgets/qa", "widgets/release-eng"]
USERS: dict[str, dict[str, Any]] = {
    "alice": {"id": 101, "email": "alice@example.com", "name": "Alice", "teams": ALICE_TEAMS},
    "bob": {"id": 102, "email": None, "teams": []},
}
RULES = [{"organization": "acme", "team": "admins", "roles": ["access", "editor"]}]


@pytest.fixture
async def gh() -> AsyncIterator[GitHubStandIn]:
    async with GitHubStandIn(USERS, max_per_page=2) as standin:
        yield standin


def connector(gh: GitHubStandIn, **keys: Any) -> dict[str, Any]:
    return parse_github(
        {"client_id": gh.client_id, "endpoint_url": gh.url, "teams_to_roles": RULES, **keys}
    )


def pending() -> Pending:
    return Pending(
        state=secrets.token_urlsafe(32), nonce="", code_verifier=secrets.token_urlsafe(48)
    )


class _Form(HTMLParser):
    """The authorize page's form: its action and its inputs' names and values."""

    def __init__(self) -> None:
        super().__init__()
        self.action = ""
        self.fields: dict[str, str] = {}

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = {k: v or "" for k, v in attrs}
        if tag == "form":
            self.action = a.get("action", "")
        elif tag == "input":
            self.fields[a["name"]] = a.get("value", "")


async def browse(
    url: str, login: str = "alice", button: str = "authorize", ssl_ctx: ssl.SSLContext | None = None
) -> dict[str, str]:
    """Be the browser: open the authorize page, press a button as ``login``, and return
    the query GitHub redirects back to the hub's callback with."""
    async with aiohttp.ClientSession() as browser:
        async with browser.get(url, ssl=ssl_ctx or True) as resp:
            assert resp.status == 200, await resp.text()
            form = _Form()
            form.feed(await resp.text())
        assert form.action, "the authorize page has no form"
        fields = {**form.fields, "login": login, button: "1"}
        async with browser.post(
            urljoin(url, form.action), data=fields, allow_redirects=False, ssl=ssl_ctx or True
        ) as resp:
            assert resp.status == 302, await resp.text()
            location = resp.headers["Location"]
    assert location.startswith(CALLBACK + "?"), location
    return dict(parse_qsl(urlsplit(location).query))


async def login(provider: GitHubProvider, who: str = "alice") -> tuple[Pending, dict[str, str]]:
    p = pending()
    redirect = await provider.begin(p, CALLBACK)
    return p, await browse(redirect.url, who)


# --- over HTTP -------------------------------------------------------------------------------


async def test_login_gives_the_login_and_every_page_of_teams(gh: GitHubStandIn) -> None:
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p = pending()
    redirect = await provider.begin(p, CALLBACK)
    query = dict(parse_qsl(urlsplit(redirect.url).query))
    assert redirect.url.startswith(f"{gh.url}/login/oauth/authorize?")
    assert query == {
        "client_id": gh.client_id,
        "redirect_uri": CALLBACK,
        "scope": "read:org",
        "state": p.state,
        "code_challenge": pkce_challenge(p.code_verifier),
        "code_challenge_method": "S256",
    }

    identity = await provider.finish(p, await browse(redirect.url), CALLBACK)

    assert identity.username == "alice"
    assert identity.subject == "101"
    assert identity.claims == {
        "login": ("alice",),
        "teams": ("acme/admins", "acme/devs", "acme/ops", "widgets/qa", "widgets/release-eng"),
        "organizations": ("acme", "widgets"),
        "email": ("alice@example.com",),
    }
    team_pages = [path for path, _ in gh.api_requests if path.startswith("/api/v3/user/teams")]
    assert len(team_pages) == 3  # 5 teams, 2 a page
    for _, headers in gh.api_requests:
        assert headers["Authorization"].startswith("Bearer gho_")
        assert headers["Accept"] == "application/vnd.github+json"
        assert headers["X-GitHub-Api-Version"] == "2022-11-28"
    # the mapping's rule for acme/admins matches the claim the login produced
    (claim, value, roles), *_ = teams_rules(provider.spec)
    assert value in identity.claims[claim] and roles == ["access", "editor"]


async def test_a_user_without_teams_or_email(gh: GitHubStandIn) -> None:
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p, params = await login(provider, "bob")
    identity = await provider.finish(p, params, CALLBACK)
    assert identity.claims == {"login": ("bob",), "teams": (), "organizations": ()}


async def test_a_wrong_or_missing_state_is_refused_before_any_request(gh: GitHubStandIn) -> None:
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p, params = await login(provider)
    for forged in ({**params, "state": p.state[:-1] + "x"}, {"code": params["code"]}):
        with pytest.raises(SSOError, match="state does not match"):
            await provider.finish(p, forged, CALLBACK)
    assert gh.tokens == {}  # the code was never exchanged
    assert (await provider.finish(p, params, CALLBACK)).username == "alice"


async def test_a_used_code_is_refused(gh: GitHubStandIn) -> None:
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p, params = await login(provider)
    await provider.finish(p, params, CALLBACK)
    with pytest.raises(SSOError, match=r"GitHub refused the login code \(The code passed is"):
        await provider.finish(p, params, CALLBACK)


async def test_a_wrong_client_secret_is_refused(gh: GitHubStandIn) -> None:
    provider = GitHubProvider("github", connector(gh), "not-the-secret")
    p, params = await login(provider)
    with pytest.raises(SSOError, match="refused the connector's client_id or client secret") as err:
        await provider.finish(p, params, CALLBACK)
    assert "not-the-secret" not in str(err.value) and gh.client_secret not in str(err.value)


async def test_a_code_verifier_other_than_the_challenge_is_refused(gh: GitHubStandIn) -> None:
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p, params = await login(provider)
    other = Pending(state=p.state, nonce="", code_verifier=secrets.token_urlsafe(48))
    with pytest.raises(SSOError, match="code_verifier does not match the code_challenge"):
        await provider.finish(other, params, CALLBACK)
    assert gh.tokens == {}


async def test_a_cancelled_login_carries_githubs_description(gh: GitHubStandIn) -> None:
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p = pending()
    params = await browse((await provider.begin(p, CALLBACK)).url, button="cancel")
    assert params["error"] == "access_denied"
    with pytest.raises(SSOError, match="The user has denied your application access"):
        await provider.finish(p, params, CALLBACK)


async def test_a_callback_url_github_does_not_know_names_the_one_to_set() -> None:
    async with GitHubStandIn(USERS, callback_url=CALLBACK) as gh:
        provider = GitHubProvider("github", connector(gh), gh.client_secret)
        p = pending()
        elsewhere = "https://other.example.com/web/sso/callback"
        async with (
            aiohttp.ClientSession() as browser,
            browser.get((await provider.begin(p, elsewhere)).url, allow_redirects=False) as resp,
        ):
            location = resp.headers["Location"]
        params = dict(parse_qsl(urlsplit(location).query))
        assert location.startswith(CALLBACK) and params["error"] == "redirect_uri_mismatch"
        with pytest.raises(SSOError, match=f"callback URL to {elsewhere}$"):
            await provider.finish(p, params, elsewhere)


async def test_enterprise_and_a_separate_api_host(gh: GitHubStandIn) -> None:
    """endpoint_url alone: the API is at <endpoint>/api/v3 (GitHub Enterprise Server);
    api_endpoint_url at the root, as api.github.com serves it."""
    spec = connector(gh)
    assert spec["api_endpoint_url"] == f"{gh.url}/api/v3"
    provider = GitHubProvider("ghe", spec, gh.client_secret)
    p, params = await login(provider)
    assert (await provider.finish(p, params, CALLBACK)).username == "alice"
    assert {path.split("?")[0] for path, _ in gh.api_requests} == {
        "/api/v3/user",
        "/api/v3/user/teams",
    }

    gh.api_requests.clear()
    root = GitHubProvider("gh", connector(gh, api_endpoint_url=gh.url + "/"), gh.client_secret)
    p, params = await login(root)
    assert len((await root.finish(p, params, CALLBACK)).claims["teams"]) == 5
    assert {path.split("?")[0] for path, _ in gh.api_requests} == {"/user", "/user/teams"}


async def test_more_team_pages_than_the_cap_are_refused() -> None:
    many: dict[str, dict[str, Any]] = {
        "carol": {"id": 7, "teams": [f"acme/t{i}" for i in range(MAX_TEAM_PAGES + 1)]}
    }
    async with GitHubStandIn(many, max_per_page=1) as gh:
        provider = GitHubProvider("github", connector(gh), gh.client_secret)
        p, params = await login(provider, "carol")
        with pytest.raises(SSOError, match="more than 1000 teams"):
            await provider.finish(p, params, CALLBACK)
        assert len(gh.api_requests) == 1 + MAX_TEAM_PAGES


@pytest.mark.parametrize("framing", ["sized", "chunked"])
async def test_a_body_over_one_mib_is_refused(gh: GitHubStandIn, framing: str) -> None:
    gh.huge_user = framing
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p, params = await login(provider)
    with pytest.raises(SSOError, match="larger than 1 MiB"):
        await provider.finish(p, params, CALLBACK)


async def test_a_stalled_github_times_out(gh: GitHubStandIn) -> None:
    gh.stall = 5.0
    provider = GitHubProvider("github", connector(gh), gh.client_secret, timeout=0.3)
    p, params = await login(provider)
    start = time.monotonic()
    with pytest.raises(SSOError, match="did not answer in time"):
        await provider.finish(p, params, CALLBACK)
    assert time.monotonic() - start < 2.0


async def test_an_unreachable_github_is_named() -> None:
    async with GitHubStandIn(USERS) as gh:
        spec = connector(gh)
    provider = GitHubProvider("github", spec, "s")  # the stand-in has stopped: port closed
    p = pending()
    params = {"code": "0123456789abcdef0123", "state": p.state}
    with pytest.raises(SSOError, match=r"cannot connect to GitHub at 127\.0\.0\.1:\d+"):
        await provider.finish(p, params, CALLBACK)


def _self_signed(tmp_path: Path) -> tuple[ssl.SSLContext, ssl.SSLContext]:
    """A server context for 127.0.0.1 and a client context trusting only it."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "ghe.test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_file, key_file = tmp_path / "ghe.crt", tmp_path / "ghe.key"
    cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_file.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server.load_cert_chain(cert_file, key_file)
    return server, ssl.create_default_context(cafile=str(cert_file))


async def test_https_with_a_private_ca_needs_the_session_factory(tmp_path: Path) -> None:
    server_ctx, client_ctx = _self_signed(tmp_path)
    async with GitHubStandIn(USERS, ssl_context=server_ctx) as gh:
        assert gh.url.startswith("https://127.0.0.1:")
        spec = connector(gh)

        untrusting = GitHubProvider("ghe", spec, gh.client_secret)
        p = pending()
        params = await browse((await untrusting.begin(p, CALLBACK)).url, ssl_ctx=client_ctx)
        with pytest.raises(SSOError, match=r"TLS certificate of 127\.0\.0\.1 is not trusted"):
            await untrusting.finish(p, params, CALLBACK)

        def trusting_session() -> aiohttp.ClientSession:
            return aiohttp.ClientSession(connector=aiohttp.TCPConnector(ssl=client_ctx))

        provider = GitHubProvider("ghe", spec, gh.client_secret, session_factory=trusting_session)
        p = pending()
        params = await browse((await provider.begin(p, CALLBACK)).url, ssl_ctx=client_ctx)
        assert (await provider.finish(p, params, CALLBACK)).username == "alice"


async def test_no_secret_or_token_in_messages_or_logs(
    gh: GitHubStandIn, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    provider = GitHubProvider("github", connector(gh), gh.client_secret)
    p, params = await login(provider)
    await provider.finish(p, params, CALLBACK)
    messages = []
    wrong = GitHubProvider("github", connector(gh), gh.client_secret[::-1])
    attempts = [
        (provider, p, params),
        (wrong, *await login(wrong)),
        (provider, *await login(provider)),
    ]
    gh.huge_user = "chunked"  # the last login fails after its token was issued
    for who, p, params in attempts:  # a used code, a wrong secret, a body too large
        with pytest.raises(SSOError) as err:
            await who.finish(p, params, CALLBACK)
        messages.append(str(err.value))
    assert len(gh.tokens) == 2
    text = caplog.text + "\n".join(messages) + repr(provider)
    assert "github login refused" in caplog.text and "github login" in caplog.text
    for secret in (gh.client_secret, gh.client_secret[::-1], *gh.tokens):
        assert secret not in text
    assert all("\n" not in m for m in messages)


# --- without sockets -------------------------------------------------------------------------


def test_pkce_challenge_is_rfc_7636_s256() -> None:
    # RFC 7636 appendix B
    verifier = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk"
    assert pkce_challenge(verifier) == "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM"


def test_the_spec_gets_its_defaults_and_survives_json() -> None:
    spec = parse_github({"client_id": "Ov23liAbc", "teams_to_roles": RULES})
    assert spec == {
        "client_id": "Ov23liAbc",
        "endpoint_url": "https://github.com",
        "api_endpoint_url": "https://api.github.com",
        "teams_to_roles": RULES,
        "scopes": ["read:org"],
    }
    assert parse_github(json.loads(json.dumps(spec))) == spec
    assert set(spec) == GITHUB_KEYS
    ghe = parse_github(
        {
            "client_id": "Iv1.0123abcd",
            "endpoint_url": "https://ghe.example.com/",
            "teams_to_roles": RULES,
            "scopes": ["read:org", "user:email", "read:org"],
        }
    )
    assert ghe["endpoint_url"] == "https://ghe.example.com"
    assert ghe["api_endpoint_url"] == "https://ghe.example.com/api/v3"
    assert ghe["scopes"] == ["read:org", "user:email"]
    for loopback in (
        "http://127.0.0.1:8080",
        "http://127.9.8.7",
        "http://[::1]:1",
        "http://localhost",
    ):
        assert parse_github({**spec, "endpoint_url": loopback})["endpoint_url"] == loopback


def test_teams_rules_are_lower_case_org_slash_team() -> None:
    spec = parse_github(
        {
            "client_id": "x",
            "teams_to_roles": [
                {"organization": "Acme", "team": "Admins", "roles": ["access"]},
                {"organization": "widgets", "team": "qa", "roles": ["a", "b"]},
            ],
        }
    )
    assert teams_rules(spec) == [
        ("teams", "acme/admins", ["access"]),
        ("teams", "widgets/qa", ["a", "b"]),
    ]


def _bad(**keys: Any) -> dict[str, Any]:
    return {"client_id": "Ov23liAbc", "teams_to_roles": RULES, **keys}


def _rule(**keys: Any) -> dict[str, Any]:
    return _bad(teams_to_roles=[{**RULES[0], **keys}])


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        (_bad(client_secret="s"), "unknown key 'client_secret' in the GitHub connector"),
        ({"teams_to_roles": RULES}, "client_id must be a non-empty string"),
        (_bad(client_id="has space"), "client_id must be the OAuth app's Client ID"),
        (_bad(endpoint_url="http://ghe.example.com"), "endpoint_url must be an https:// URL"),
        (_bad(endpoint_url="http://10.0.0.1"), "endpoint_url must be an https:// URL"),
        (_bad(api_endpoint_url="http://api.example.com"), "api_endpoint_url must be an https://"),
        (_bad(endpoint_url="ftp://ghe.example.com"), "endpoint_url must be an https:// URL"),
        (_bad(endpoint_url="https://ghe.example.com/?x=1"), "without user, query or #fragment"),
        (_bad(endpoint_url="https://u:p@ghe.example.com"), "without user, query or #fragment"),
        (_bad(endpoint_url="https://ghe.example.com:99999"), "endpoint_url must be an https://"),
        (_bad(endpoint_url=443), "endpoint_url must be an https:// URL"),
        (_bad(teams_to_roles=None), "teams_to_roles must list at least one"),
        (_bad(teams_to_roles=[]), "teams_to_roles must list at least one"),
        (_bad(teams_to_roles={"acme": "admins"}), "teams_to_roles must list at least one"),
        (_bad(teams_to_roles=["acme/admins"]), r"teams_to_roles\[0\] must be a table"),
        (_rule(extra=1), r"unknown key 'extra' in teams_to_roles\[0\]"),
        (_rule(organization=""), r"teams_to_roles\[0\]\.organization must be a non-empty"),
        (_rule(organization="acme/x"), r"teams_to_roles\[0\]\.organization must be the"),
        (_rule(team=None), r"teams_to_roles\[0\]\.team must be a non-empty string"),
        (_rule(team="Core Team"), r"team must be the team's slug, as in github\.com/orgs"),
        (_rule(roles=[]), r"teams_to_roles\[0\]\.roles must be a non-empty list"),
        (_rule(roles="access"), r"roles must be a non-empty list of role names"),
        (_rule(roles=["access", 3]), r"roles must be a non-empty list of role names"),
        (_rule(roles=[""]), r"roles must be a non-empty list of role names"),
        (_bad(scopes="read:org"), "scopes must be a list of GitHub OAuth scopes"),
        (_bad(scopes=["read org"]), "scopes must be a list of GitHub OAuth scopes"),
        (_bad(scopes=["user:email"]), "scopes must include read:org"),
    ],
)
def test_parse_github_refuses_with_one_line_naming_the_key(
    doc: dict[str, Any], message: str
) -> None:
    with pytest.raises(UsageError, match=message) as err:
        parse_github(doc)
    assert "\n" not in str(err.value)


def test_the_next_page_must_stay_on_the_api() -> None:
    api = "https://ghe.example.com/api/v3"
    page = f"{api}/user/teams?per_page=100"
    link = '<https://ghe.example.com/api/v3/user/teams?page=2>; rel="next", <x>; rel="last"'
    assert next_link(link, page, api) == "https://ghe.example.com/api/v3/user/teams?page=2"
    assert next_link('</api/v3/user/teams?page=3>; rel="prev next"', page, api) == (
        "https://ghe.example.com/api/v3/user/teams?page=3"
    )
    assert next_link('<https://ghe.example.com/api/v3/x>; rel="last"', page, api) is None
    assert next_link(None, page, api) is None
    for off in (
        "https://evil.example.com/api/v3/user/teams?page=2",
        "http://ghe.example.com/api/v3/user/teams?page=2",
        "https://ghe.example.com/api/v3x/user/teams",
        "https://ghe.example.com/login",
    ):
        with pytest.raises(SSOError, match=r"next page of teams is off ghe\.example\.com"):
            next_link(f'<{off}>; rel="next"', page, api)


def test_parsers_refuse_malformed_answers() -> None:
    assert parse_token({"access_token": "gho_x", "token_type": "bearer"}, CALLBACK) == "gho_x"
    for body, message in [
        ([], "not a JSON object"),
        ({"token_type": "bearer"}, "no usable access_token"),
        ({"access_token": "a b"}, "no usable access_token"),
        ({"access_token": "a", "token_type": "mac"}, "'mac' token, not a bearer token"),
        ({"error": "unknown_thing", "error_description": "x\ny"}, "unknown_thing: x y$"),
    ]:
        with pytest.raises(SSOError, match=message):
            parse_token(body, CALLBACK)
    assert parse_user({"login": "a-b", "id": 5, "email": ""}).email is None
    user: object
    for user in ({"login": "a b", "id": 1}, {"login": "a", "id": True}, {"login": "a"}, []):
        with pytest.raises(SSOError):
            parse_user(user)
    assert parse_teams([{"slug": "Ops", "organization": {"login": "ACME"}}]) == [("acme", "ops")]
    teams: object
    for teams in ({}, [{"slug": "x"}], [{"slug": "a b", "organization": {"login": "o"}}], [3]):
        with pytest.raises(SSOError):
            parse_teams(teams)


_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner, max_size=4)
    ),
    max_leaves=20,
)


def _only_sso_errors(parse: Callable[[Any], object], value: Any) -> None:
    try:
        parse(value)
    except SSOError as err:
        assert "\n" not in str(err)


@settings(max_examples=300, deadline=None)
@given(
    token=_json
    | st.dictionaries(
        st.sampled_from(["access_token", "token_type", "error", "error_description"]), _json
    ),
    user=_json | st.dictionaries(st.sampled_from(["login", "id", "email"]), _json),
    teams=st.lists(
        st.dictionaries(
            st.sampled_from(["slug", "organization"]),
            _json | st.dictionaries(st.just("login"), _json),
        ),
        max_size=3,
    ),
    link=st.text(max_size=80),
)
def test_parsers_raise_only_sso_errors(token: Any, user: Any, teams: Any, link: str) -> None:
    _only_sso_errors(lambda body: parse_token(body, CALLBACK), token)
    _only_sso_errors(parse_user, user)
    _only_sso_errors(parse_teams, teams)
    _only_sso_errors(
        lambda h: next_link(h, "https://api.github.com/user/teams", "https://api.github.com"), link
    )
