"""SAML 2.0 sign-in (hub/sso/saml.py) against a real IdP (tests/idp/saml_idp.mjs,
samlify) on loopback, driven over HTTP as a browser would: login with attributes,
and every check a forged, stale, misdirected or replayed response must fail."""

from __future__ import annotations

import base64
import logging
import re
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import aiohttp
import pytest
from samlkit import Form, SamlIdp, browser_login, saml_idp

from hub.sso.provider import Identity, Pending, Redirect, SSOError
from hub.sso.saml import SAMLProvider, fetch_metadata, parse_saml, sp_metadata
from hub.storage.api import Conflict
from remoteler.errors import UsageError

HUB = "https://hub.example.com"
ENTITY_ID = f"{HUB}/web/sso/saml/corp"
ACS = f"{HUB}/web/sso/acs"

USERS: dict[str, dict[str, Any]] = {
    "alice": {
        "groups": ["ops", "dev"],
        "email": "alice@example.com",
        "urn:oid:2.5.4.42": {"friendly_name": "givenName", "values": ["Alice"]},
        "secret_note": "do-not-log-7f3a",
    },
    "bob": {"groups": ["readers"]},
}


class DictSSOStates:
    """Test-only stand-in for the storage engines' ``SSOStates`` (hub/storage/api.py):
    the same contract, in a dict."""

    def __init__(self) -> None:
        self.entries: dict[str, tuple[str, float]] = {}

    def _live(self, now: float) -> dict[str, tuple[str, float]]:
        return {k: v for k, v in self.entries.items() if v[1] > now}

    async def add(self, key: str, value: str, expires: float, now: float, cap: int) -> bool:
        live = self._live(now)
        if key in live:
            raise Conflict(f"{key} exists")
        if len(live) >= cap:
            return False
        self.entries[key] = (value, expires)
        return True

    async def take(self, key: str, now: float) -> str | None:
        entry = self.entries.pop(key, None)
        return entry[0] if entry is not None and entry[1] > now else None

    async def prune(self, now: float, limit: int) -> int:
        dead = [k for k, v in self.entries.items() if v[1] <= now][:limit]
        for k in dead:
            del self.entries[k]
        return len(dead)


@pytest.fixture(scope="module")
def idp(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SamlIdp]:
    with saml_idp(tmp_path_factory.mktemp("saml"), USERS) as server:
        yield server


def provider(
    idp: SamlIdp,
    *,
    states: DictSSOStates | None = None,
    entity_id: str = ENTITY_ID,
    acs_url: str = ACS,
    clock: Callable[[], float] = time.time,
    fetch: Callable[[str], Awaitable[bytes]] | None = None,
    **doc: Any,
) -> SAMLProvider:
    spec = parse_saml({"idp_metadata_url": idp.metadata_url, **doc})
    return SAMLProvider(
        "corp",
        spec,
        entity_id=entity_id,
        acs_url=acs_url,
        states=states or DictSSOStates(),
        clock=clock,
        fetch=fetch,
    )


async def login(p: SAMLProvider, username: str = "alice", **knobs: str) -> tuple[Pending, Form]:
    """begin, then the browser at the IdP: the pending login and the form for the ACS."""
    pending = Pending(state="state-" + str(time.monotonic_ns()), nonce="n", code_verifier="v")
    redirect = await p.begin(pending, ACS)
    async with aiohttp.ClientSession() as session:
        form = await browser_login(session, redirect.url, username, **knobs)
    return Pending(pending.state, "n", "v", request_id=redirect.request_id), form


def rewrite(form: Form, change: Callable[[str], str]) -> dict[str, str]:
    """The form's fields with the SAMLResponse's XML changed by ``change``."""
    xml = base64.b64decode(form.fields["SAMLResponse"]).decode()
    changed = change(xml)
    assert changed != xml
    return {**form.fields, "SAMLResponse": base64.b64encode(changed.encode()).decode()}


async def refused(p: SAMLProvider, pending: Pending, fields: dict[str, str]) -> str:
    with pytest.raises(SSOError) as err:
        await p.finish(pending, fields, ACS)
    message = str(err.value)
    assert "\n" not in message
    return message


# -- a good login ----------------------------------------------------------------------


async def test_login_maps_every_attribute_by_name_and_friendly_name(
    idp: SamlIdp, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    p = provider(idp)
    pending, form = await login(p)
    assert form.action == ACS
    assert form.fields["RelayState"] == pending.state
    identity = await p.finish(pending, form.fields, ACS)
    assert isinstance(identity, Identity)
    assert identity.username == "alice"
    assert identity.subject == "alice"
    assert identity.claims["groups"] == ("ops", "dev")
    assert identity.claims["email"] == ("alice@example.com",)
    assert identity.claims["urn:oid:2.5.4.42"] == ("Alice",)
    assert identity.claims["givenName"] == ("Alice",)
    # ids only in the log: no attribute value, not even with DEBUG on
    assert "do-not-log-7f3a" not in caplog.text
    assert "alice@example.com" not in caplog.text


async def test_begin_redirects_to_the_idp_with_relay_state_and_request_id(idp: SamlIdp) -> None:
    p = provider(idp)
    pending = Pending(state="s-123", nonce="n", code_verifier="v")
    redirect = await p.begin(pending, ACS)
    assert isinstance(redirect, Redirect)
    assert redirect.url.startswith(f"{idp.base_url}/sso?SAMLRequest=")
    assert "RelayState=s-123" in redirect.url
    assert redirect.request_id
    assert redirect.request_id != (await p.begin(pending, ACS)).request_id


async def test_username_attribute_picks_the_user_name(idp: SamlIdp) -> None:
    p = provider(idp, username_attribute="email")
    pending, form = await login(p)
    identity = await p.finish(pending, form.fields, ACS)
    assert identity.username == "alice@example.com"
    assert identity.subject == "alice"
    # an attribute the IdP does not send for this user: refused, naming it
    p = provider(idp, username_attribute="email")
    pending, form = await login(p, "bob")
    assert "no email attribute" in await refused(p, pending, form.fields)


async def test_inline_metadata_and_fetched_once(idp: SamlIdp) -> None:
    spec = parse_saml({"idp_metadata": idp.metadata_xml()})
    states = DictSSOStates()
    p = SAMLProvider("corp", spec, entity_id=ENTITY_ID, acs_url=ACS, states=states)
    pending, form = await login(p)
    assert (await p.finish(pending, form.fields, ACS)).username == "alice"

    fetched: list[str] = []

    async def counting(url: str) -> bytes:
        fetched.append(url)
        return await fetch_metadata(url)

    p = provider(idp, fetch=counting)
    for _ in range(3):
        await p.begin(Pending("s", "n", "v"), ACS)
    assert fetched == [idp.metadata_url]


async def test_metadata_fetch_failures_are_one_line_and_retried(idp: SamlIdp) -> None:
    calls = 0

    async def flaky(url: str) -> bytes:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise SSOError("HTTP 503")
        return await fetch_metadata(url)

    p = provider(idp, fetch=flaky)
    with pytest.raises(
        SSOError, match=r"could not fetch the identity provider's metadata \(HTTP 503\)"
    ):
        await p.begin(Pending("s", "n", "v"), ACS)
    await p.begin(Pending("s", "n", "v"), ACS)  # not cached: fetched again

    with pytest.raises(SSOError, match="HTTP 404"):
        await fetch_metadata(f"{idp.base_url}/nothing-here")
    p = provider(idp, fetch=lambda url: fetch_metadata(url.replace("/metadata", "/sso")))
    with pytest.raises(SSOError, match="could not fetch"):
        await p.begin(Pending("s", "n", "v"), ACS)


# -- refusals ----------------------------------------------------------------------------


async def test_broken_signature_refused(idp: SamlIdp) -> None:
    p = provider(idp)
    pending, form = await login(p)
    fields = rewrite(form, lambda xml: xml.replace(">ops<", ">root<", 1))
    assert await refused(p, pending, fields) == (
        "the identity provider's response failed its signature check"
    )
    # the untouched response still passes: it was the byte, not the setup
    assert (await p.finish(pending, form.fields, ACS)).claims["groups"] == ("ops", "dev")


async def test_signature_by_another_key_refused(idp: SamlIdp, tmp_path: Path) -> None:
    """An impostor with the same entity id but its own key (its cert in KeyInfo)."""
    p = provider(idp)
    pending = Pending(state="s-imp", nonce="n", code_verifier="v")
    redirect = await p.begin(pending, ACS)
    pending = Pending("s-imp", "n", "v", request_id=redirect.request_id)
    with saml_idp(tmp_path, USERS, name="impostor", entity_id=idp.entity_id) as impostor:
        async with aiohttp.ClientSession() as session:
            form = await browser_login(
                session, redirect.url.replace(idp.base_url, impostor.base_url), "alice"
            )
    assert "signature check" in await refused(p, pending, form.fields)


async def test_unsigned_assertion_refused(idp: SamlIdp) -> None:
    p = provider(idp)
    # the Response signed, the assertion inside not: still refused
    pending, form = await login(p, sign="response")
    assert "assertion is not signed" in await refused(p, pending, form.fields)
    # no signature at all
    pending, form = await login(p)
    fields = rewrite(form, lambda xml: re.sub(r"<ds:Signature.*?</ds:Signature>", "", xml))
    assert "assertion is not signed" in await refused(p, pending, fields)


async def test_wrong_audience_refused(idp: SamlIdp) -> None:
    states = DictSSOStates()
    pending, form = await login(provider(idp, states=states))
    other = provider(idp, states=states, entity_id=f"{HUB}/web/sso/saml/other")
    assert "(audience)" in await refused(other, pending, form.fields)


async def test_wrong_recipient_refused(idp: SamlIdp) -> None:
    pending, form = await login(provider(idp))
    other_acs = "https://other.example.com/web/sso/acs"
    other = provider(idp, acs_url=other_acs)
    assert "(recipient)" in await refused(other, pending, form.fields)
    # Destination (outside the signed assertion) rewritten: the signed Recipient still
    # names the first ACS
    fields = rewrite(
        form, lambda xml: xml.replace(f'Destination="{ACS}"', f'Destination="{other_acs}"')
    )
    assert "(recipient)" in await refused(other, pending, fields)


async def test_expired_and_not_yet_valid_refused(idp: SamlIdp) -> None:
    pending, form = await login(provider(idp))
    later = provider(idp, clock=lambda: time.time() + 3600)
    assert "expired or is not valid yet" in await refused(later, pending, form.fields)
    earlier = provider(idp, clock=lambda: time.time() - 3600)
    assert "expired or is not valid yet" in await refused(earlier, pending, form.fields)
    # within CLOCK_SKEW (60 s) of NotOnOrAfter (300 s): accepted
    skewed = provider(idp, clock=lambda: time.time() + 330)
    assert (await skewed.finish(pending, form.fields, ACS)).username == "alice"


async def test_replay_refused(idp: SamlIdp) -> None:
    states = DictSSOStates()
    p = provider(idp, states=states)
    pending, form = await login(p)
    await p.finish(pending, form.fields, ACS)
    [(key, (_, expires))] = states.entries.items()
    assert key.startswith("saml-assertion:_")
    assert time.time() + 300 < expires <= time.time() + 300 + 60 + 5
    # the same response again, even to another hub of the cluster (same storage)
    assert "used already" in await refused(p, pending, form.fields)
    assert "used already" in await refused(provider(idp, states=states), pending, form.fields)


async def test_replay_store_full_refuses(idp: SamlIdp) -> None:
    class Full(DictSSOStates):
        async def add(self, key: str, value: str, expires: float, now: float, cap: int) -> bool:
            assert cap == 100_000
            return False

    p = provider(idp, states=Full())
    pending, form = await login(p)
    assert "too many SSO logins" in await refused(p, pending, form.fields)


async def test_in_response_to_mismatch_refused(idp: SamlIdp) -> None:
    p = provider(idp)
    pending, form = await login(p)
    other = await p.begin(Pending(pending.state, "n", "v"), ACS)
    wrong = Pending(pending.state, "n", "v", request_id=other.request_id)
    assert "does not answer this login" in await refused(p, wrong, form.fields)
    # IdP-initiated (no request of ours): refused too
    assert "sent no SAML request" in await refused(p, Pending(pending.state, "n", "v"), form.fields)
    # InResponseTo rewritten to the other request: the signed assertion still names ours
    fields = rewrite(
        form,
        lambda xml: xml.replace(
            f'InResponseTo="{pending.request_id}"', f'InResponseTo="{other.request_id}"', 1
        ),
    )
    assert "does not answer this login" in await refused(p, wrong, fields)


async def test_error_status_refused(idp: SamlIdp) -> None:
    p = provider(idp)
    pending, form = await login(p, status="Responder")
    assert (
        await refused(p, pending, form.fields)
        == "the identity provider refused the login (an error status)"
    )


async def test_relay_state_and_form_checked(idp: SamlIdp) -> None:
    p = provider(idp)
    pending, form = await login(p)
    assert "not for this login" in await refused(p, pending, {**form.fields, "RelayState": "x"})
    assert "no SAMLResponse" in await refused(p, pending, {"RelayState": pending.state})
    garbage = {"RelayState": pending.state, "SAMLResponse": "not base64!"}
    assert "not a SAML Response" in await refused(p, pending, garbage)
    huge = {"RelayState": pending.state, "SAMLResponse": "A" * (512 * 1024 + 4)}
    assert "too large" in await refused(p, pending, huge)
    assert (await p.finish(pending, form.fields, ACS)).username == "alice"


# -- the connector document and SP metadata ---------------------------------------------


def test_parse_saml_accepts_and_defaults(idp: SamlIdp) -> None:
    spec = parse_saml({"idp_metadata_url": "https://idp.example.com/metadata", "name": "x"})
    assert spec == {
        "entity_id": None,
        "idp_metadata_url": "https://idp.example.com/metadata",
        "idp_metadata": None,
        "username_attribute": None,
    }
    spec = parse_saml(
        {
            "idp_metadata": idp.metadata_xml(),
            "entity_id": ENTITY_ID,
            "username_attribute": "email",
            "assertion_signed": True,
            "attributes_to_roles": [{"name": "groups", "value": "ops", "roles": ["access"]}],
        }
    )
    assert spec["entity_id"] == ENTITY_ID and spec["username_attribute"] == "email"
    assert parse_saml({"idp_metadata_url": "http://127.0.0.1:9/md"})["idp_metadata_url"]
    assert parse_saml({"idp_metadata_url": "http://[::1]:9/md"})["idp_metadata_url"]


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({}, "idp_metadata_url (or idp_metadata_file) is required"),
        ({"idp_metadata_url": "https://a/m", "idp_metadata": "<x/>"}, "not both"),
        ({"idp_metadata_url": "http://idp.example.com/m"}, "idp_metadata_url must use https://"),
        ({"idp_metadata_url": "ftp://127.0.0.1/m"}, "idp_metadata_url must use https://"),
        ({"idp_metadata_url": 5}, "idp_metadata_url must be a URL"),
        ({"idp_metadata": ""}, "idp_metadata must be the IdP's metadata XML"),
        ({"idp_metadata": "<not metadata"}, "idp_metadata is not readable SAML metadata"),
        ({"idp_metadata": "x" * (1 << 20 | 1)}, "idp_metadata is larger than 1 MiB"),
        ({"idp_metadata_url": "https://a/m", "assertion_signed": False}, "assertion_signed cannot"),
        ({"idp_metadata_url": "https://a/m", "assertion_signed": "no"}, "assertion_signed cannot"),
        ({"idp_metadata_url": "https://a/m", "username_attribute": ""}, "username_attribute must"),
        ({"idp_metadata_url": "https://a/m", "username_attribute": 3}, "username_attribute must"),
        ({"idp_metadata_url": "https://a/m", "entity_id": ""}, "entity_id must be a URI"),
        ({"idp_metadata_url": "https://a/m", "entity_id": ["x"]}, "entity_id must be a URI"),
    ],
)
def test_parse_saml_errors_name_the_key(doc: dict[str, Any], message: str) -> None:
    with pytest.raises(UsageError) as err:
        parse_saml(doc)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_parse_saml_checks_the_metadata(idp: SamlIdp) -> None:
    xml = idp.metadata_xml()
    no_cert = re.sub(r"<KeyDescriptor.*?</KeyDescriptor>", "", xml)
    with pytest.raises(UsageError, match="no signing certificate"):
        parse_saml({"idp_metadata": no_cert})
    plain_http = xml.replace(idp.base_url + "/sso", "http://idp.example.com/sso")
    with pytest.raises(UsageError, match="SingleSignOnService must use https://"):
        parse_saml({"idp_metadata": plain_http})
    body = xml.split("?>")[-1]
    two = (
        '<EntitiesDescriptor xmlns="urn:oasis:names:tc:SAML:2.0:metadata">'
        + body
        + body.replace(idp.entity_id, "https://second.example.com/idp")
        + "</EntitiesDescriptor>"
    )
    with pytest.raises(UsageError, match="must describe one identity provider; it describes 2"):
        parse_saml({"idp_metadata": two})
    expired = xml.replace(
        "<EntityDescriptor ", '<EntityDescriptor validUntil="2020-01-01T00:00:00Z" ', 1
    )
    with pytest.raises(UsageError, match=r"idp_metadata has expired \(validUntil\)"):
        parse_saml({"idp_metadata": expired})
    no_redirect = xml.replace("bindings:HTTP-Redirect", "bindings:HTTP-POST")
    with pytest.raises(UsageError, match="no SingleSignOnService for the HTTP-Redirect binding"):
        parse_saml({"idp_metadata": no_redirect})


def test_sp_metadata_names_entity_id_acs_and_signed_assertions() -> None:
    md = "{urn:oasis:names:tc:SAML:2.0:metadata}"
    root = ElementTree.fromstring(sp_metadata(ENTITY_ID, ACS))
    assert root.tag == f"{md}EntityDescriptor" and root.get("entityID") == ENTITY_ID
    [sp] = root.findall(f"{md}SPSSODescriptor")
    assert sp.get("WantAssertionsSigned") == "true"
    [acs] = sp.findall(f"{md}AssertionConsumerService")
    assert acs.get("Location") == ACS
    assert acs.get("Binding") == "urn:oasis:names:tc:SAML:2.0:bindings:HTTP-POST"
