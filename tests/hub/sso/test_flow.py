"""The SSO login flow (hub/sso/flow.py) on a real SQLite storage and the GitHub stand-in
(tests/ghstand.py; GitHub itself cannot be reached from here): single-use state, the
browser binding of web logins, the per-address cap, the sealed answer for tsh, a lock,
and the upkeep of lapsed logins and SSO users."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import pytest
from ghstand import GitHubStandIn
from hubkit import Clock

from hub.auth.service import AuthService
from hub.sso.connectors import parse_connector, to_stored
from hub.sso.flow import MAX_PENDING_PER_ADDR, PENDING_TTL, SSOService
from hub.sso.provider import SSOError
from hub.storage.api import Storage
from remoteler.access import Role
from remoteler.ca import generate_private_key, public_key_to_openssh
from remoteler.errors import AccessDenied, UsageError
from remoteler.locks import Lock
from remoteler.ssoseal import encode_key, new_key, unseal

USERS = {
    "erin": {"id": 7, "email": "erin@example.com", "name": "Erin", "teams": ["acme/field"]},
    "sam": {"id": 8, "email": None, "name": "Sam", "teams": ["acme/sales"]},
}
PUBLIC = "https://hub.example.com:3080"
TSH = "http://127.0.0.1:45678/callback"


@pytest.fixture
async def stand() -> AsyncIterator[GitHubStandIn]:
    async with GitHubStandIn(USERS, callback_url=PUBLIC + "/web/sso/callback") as gh:
        yield gh


@pytest.fixture
async def sso(
    storage: Storage, auth: AuthService, clock: Clock, stand: GitHubStandIn
) -> SSOService:
    await storage.roles.put(Role(name="tech", logins=("pi",), node_labels={"*": ("*",)}))
    doc = {
        "kind": "github",
        "name": "gh",
        "client_id": stand.client_id,
        "client_secret": stand.client_secret,
        "endpoint_url": stand.url,
        "teams_to_roles": [{"organization": "acme", "team": "field", "roles": ["tech"]}],
    }
    await storage.connectors.put(to_stored(parse_connector(doc), None, clock()))
    return SSOService(storage, auth, lambda: PUBLIC, clock=clock)


async def _authorize(url: str, login: str) -> dict[str, str]:
    """What a browser does at the stand-in: the Authorize form; the callback's query."""
    async with aiohttp.ClientSession() as http:
        async with http.get(url) as page:
            text = await page.text()
        fields = dict(
            (part.split('name="')[1].split('"')[0], part.split('value="')[1].split('"')[0])
            for part in text.split("<input")[1:]
            if 'type="hidden"' in part
        )
        fields.update(login=login, authorize="1")
        async with http.post(url.split("?")[0], data=fields, allow_redirects=False) as done:
            back = done.headers["Location"]
    return {k: v[0] for k, v in parse_qs(urlsplit(back).query).items()}


async def _tsh_start(
    sso: SSOService, key: bytes, addr: str = "10.0.0.1", ttl: int | None = None
) -> tuple[str, str]:
    pub = public_key_to_openssh(generate_private_key().public_key())
    rid, url = await sso.start(
        "gh",
        mode="tsh",
        remote_addr=addr,
        public_key=pub,
        client_key=encode_key(key),
        redirect_url=TSH,
        ttl=ttl,
    )
    assert url == f"{PUBLIC}/web/sso/start/{rid}"
    return rid, await sso.open_start(rid)


async def test_tsh_login_issues_sealed_certificates_and_the_state_works_once(
    sso: SSOService, storage: Storage
) -> None:
    key = new_key()
    rid, idp_url = await _tsh_start(sso, key)
    with pytest.raises(SSOError, match="used already"):
        await sso.open_start(rid)  # the start link works once
    params = await _authorize(idp_url, "erin")
    record = await sso.pending(params)
    done = await sso.finish(record, params, "", "10.0.0.1")
    assert done.mode == "tsh" and done.user == "erin"
    sealed = parse_qs(urlsplit(done.redirect).query)["response"][0]
    assert done.redirect.startswith(TSH + "?response=")
    answer = unseal(key, rid, sealed)
    assert answer["user"] == "erin" and answer["logins"] == ["pi"]
    user = await storage.users.get("erin")
    assert user is not None and user.connector == "gh" and user.roles == ("tech",)
    assert user.traits["teams"] == ("acme/field",)
    assert user.password_hash is None and user.totp_secret is None
    with pytest.raises(SSOError, match="finished already"):
        await sso.pending(params)  # a replayed state


async def test_web_logins_are_bound_to_the_browser_that_started_them(sso: SSOService) -> None:
    _, url = await sso.start("gh", mode="web", remote_addr="10.0.0.2", binding="cookie-A")
    params = await _authorize(url, "erin")
    record = await sso.pending(params)
    with pytest.raises(SSOError, match="another browser"):
        await sso.finish(record, params, "cookie-B", "10.0.0.2")


async def test_an_unmapped_user_and_a_locked_user_are_refused(
    sso: SSOService, storage: Storage, clock: Clock
) -> None:
    _, url = await sso.start("gh", mode="web", remote_addr="10.0.0.3", binding="c")
    params = await _authorize(url, "sam")
    with pytest.raises(SSOError, match="teams: 'acme/sales'"):
        await sso.finish(await sso.pending(params), params, "c", "10.0.0.3")
    assert await storage.users.get("sam") is None
    await storage.locks.add(Lock("0123456789ab", "user", "erin", "on leave", clock()))
    _, url = await sso.start("gh", mode="web", remote_addr="10.0.0.3", binding="c")
    params = await _authorize(url, "erin")
    with pytest.raises(AccessDenied, match="on leave"):
        await sso.finish(await sso.pending(params), params, "c", "10.0.0.3")


async def test_one_address_may_hold_only_so_many_pending_logins(sso: SSOService) -> None:
    for _ in range(MAX_PENDING_PER_ADDR):
        await sso.start("gh", mode="web", remote_addr="10.9.9.9", binding="c")
    with pytest.raises(SSOError, match="too many logins started from your address"):
        await sso.start("gh", mode="web", remote_addr="10.9.9.9", binding="c")
    await sso.start("gh", mode="web", remote_addr="10.9.9.10", binding="c")  # others may


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"redirect_url": "http://evil.example.com:80/callback"}, "redirect_url must be"),
        ({"redirect_url": "http://127.0.0.1:8/other"}, "redirect_url must be"),
        ({"redirect_url": "http://127.0.0.1:8/callback?x=1"}, "redirect_url must be"),
        ({"redirect_url": "http://evil.example.com\\@127.0.0.1:8/callback"}, "redirect_url"),
        ({"redirect_url": "http://user@127.0.0.1:8/callback"}, "redirect_url must be"),
        ({"redirect_url": "http://127.0.0.1:99999/callback"}, "redirect_url must be"),
        ({"redirect_url": "http://[::1/callback"}, "redirect_url must be"),
        ({"redirect_url": "http://127.0.0.1/callback"}, "redirect_url must be"),
        ({"client_key": "short"}, "32 bytes"),
    ],
)
async def test_bad_tsh_requests_are_refused(
    sso: SSOService, change: dict[str, str], message: str
) -> None:
    params: dict[str, Any] = {"client_key": encode_key(new_key()), "redirect_url": TSH, **change}
    with pytest.raises((UsageError, ValueError), match=message):
        await sso.start("gh", mode="tsh", remote_addr="10.0.0.4", public_key="x", **params)


async def test_lapsed_pending_logins_and_sso_users_are_pruned(
    sso: SSOService, storage: Storage, clock: Clock
) -> None:
    key = new_key()
    _, idp_url = await _tsh_start(sso, key)
    params = await _authorize(idp_url, "erin")
    await sso.finish(await sso.pending(params), params, "", "10.0.0.5")
    await sso.start("gh", mode="web", remote_addr="10.0.0.5", binding="c")  # never finished
    user = await storage.users.get("erin")
    assert user is not None and user.expires is not None
    clock.advance(PENDING_TTL + 1)
    states, users = await sso.prune()
    assert states >= 1 and users == 0  # erin's certificates are still good
    clock.now = user.expires + 1
    assert (await sso.prune())[1] == 1
    assert await storage.users.get("erin") is None


async def test_unknown_connector_and_listing(sso: SSOService) -> None:
    with pytest.raises(SSOError, match="no SSO connector 'nope'"):
        await sso.start("nope", mode="web", remote_addr="x", binding="c")
    assert await sso.listing() == [{"name": "gh", "kind": "github", "display": "gh"}]
    assert json.dumps(await sso.listing()).count("secret") == 0


async def _web_login(
    sso: SSOService, login: str, addr: str = "10.0.1.1", connector: str = "gh"
) -> Any:
    _, url = await sso.start(connector, mode="web", remote_addr=addr, binding="c")
    params = await _authorize(url, login)
    return await sso.finish(await sso.pending(params), params, "c", addr)


async def test_a_user_name_belongs_to_one_identity_while_its_certificates_last(
    sso: SSOService, storage: Storage, clock: Clock, stand: GitHubStandIn
) -> None:
    """Another connector (or another subject) giving the same name cannot take over the
    record, and with it the roles the hub grants that name, until it lapses."""
    row = await storage.connectors.get("gh")
    assert row is not None
    await storage.connectors.put(type(row)("gh2", row.kind, row.spec, row.created))
    await _web_login(sso, "erin")
    with pytest.raises(SSOError, match=r"belongs to another identity .*connector 'gh'"):
        await _web_login(sso, "erin", connector="gh2")
    user = await storage.users.get("erin")
    assert user is not None and user.connector == "gh" and user.expires is not None
    clock.now = user.expires + 1  # lapsed: the name is free again
    await _web_login(sso, "erin", connector="gh2")
    again = await storage.users.get("erin")
    assert again is not None and again.connector == "gh2"
    assert again.traits["remoteler.subject"] == ("7",)


async def test_a_shorter_login_never_shortens_the_record(
    sso: SSOService, storage: Storage, clock: Clock
) -> None:
    key = new_key()
    _, idp_url = await _tsh_start(sso, key, "10.0.0.6")
    params = await _authorize(idp_url, "erin")
    await sso.finish(await sso.pending(params), params, "", "10.0.0.6")
    long = await storage.users.get("erin")
    assert long is not None and long.expires is not None
    _, idp_url = await _tsh_start(sso, key, "10.0.0.6", ttl=300)
    params = await _authorize(idp_url, "erin")
    await sso.finish(await sso.pending(params), params, "", "10.0.0.6")
    short = await storage.users.get("erin")
    assert short is not None and short.expires == long.expires


def test_ipv6_clients_count_by_their_slash_64() -> None:
    from hub.sso.flow import _AddressCounts

    counts = _AddressCounts()
    for i in range(MAX_PENDING_PER_ADDR):
        assert counts.take(f"2001:db8:1:2::{i + 1:x}", 0.0)
    assert not counts.take("2001:db8:1:2:ffff::9", 0.0)  # same /64
    assert counts.take("2001:db8:1:3::1", 0.0)  # another /64
    assert counts.take("10.0.0.1", 0.0)


async def test_an_unmapped_user_is_logged_without_the_values(
    sso: SSOService, caplog: pytest.LogCaptureFixture
) -> None:
    from hub.sso.mapping import NoRoleMapped

    with pytest.raises(NoRoleMapped) as err:
        await _web_login(sso, "sam")
    assert "acme/sales" in err.value.message  # the user sees what the provider sent
    assert "acme/sales" not in err.value.log_reason and "teams" in err.value.log_reason
