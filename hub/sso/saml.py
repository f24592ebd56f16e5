"""SAML 2.0 single sign-on: the hub as a service provider (docs/sso.md, "SAML").

Web Browser SSO profile (saml-profiles §4.1): :meth:`SAMLProvider.begin` sends the
browser to the IdP with an AuthnRequest (HTTP-Redirect binding, RelayState = the
pending login's state); the IdP posts a Response to the hub's ACS URL (HTTP-POST
binding) and :meth:`SAMLProvider.finish` checks it.

XML signatures are checked by pysaml2 with xmlsec1 against the certificate in the
IdP's metadata only (never one the response carries). On top of pysaml2 this module
requires, with the hub's clock (``clock``, :data:`CLOCK_SKEW` either way):

- a signed assertion, issued by the metadata's IdP (saml-profiles §4.1.4.2);
- ``Conditions`` with an ``AudienceRestriction`` naming our entity id in each one;
- ``Response@Destination`` (when present) and the bearer ``Recipient`` = our ACS URL;
- ``InResponseTo`` = the pending login's AuthnRequest ID (no IdP-initiated logins);
- ``NotBefore``/``NotOnOrAfter`` of the conditions and of the bearer confirmation;
- the assertion ID unused so far, kept in :class:`SSOStates` until it expires.

Every refusal is an :class:`SSOError` with one line for the user; the log carries
ids and exception classes, never the assertion's contents.
"""

from __future__ import annotations

import asyncio
import base64
import calendar
import hmac
import logging
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import aiohttp
from saml2 import BINDING_HTTP_POST, BINDING_HTTP_REDIRECT  # type: ignore[import-untyped]
from saml2.client import Saml2Client  # type: ignore[import-untyped]
from saml2.config import SPConfig  # type: ignore[import-untyped]
from saml2.mdstore import ToOld  # type: ignore[import-untyped]
from saml2.metadata import entity_descriptor  # type: ignore[import-untyped]
from saml2.response import (  # type: ignore[import-untyped]
    IncorrectlySigned,
    StatusError,
    UnsolicitedResponse,
    VerificationError,
)
from saml2.s_utils import UnsupportedBinding  # type: ignore[import-untyped]
from saml2.saml import SCM_BEARER  # type: ignore[import-untyped]
from saml2.samlp import response_from_string  # type: ignore[import-untyped]
from saml2.sigver import SignatureError, SigverError  # type: ignore[import-untyped]
from saml2.time_util import str_to_time  # type: ignore[import-untyped]
from saml2.validate import ResponseLifetimeExceed, ToEarly  # type: ignore[import-untyped]

from hub.sso.fetch import read_capped
from hub.sso.provider import CLOCK_SKEW, Identity, Pending, Redirect, SSOError
from hub.sso.urls import check_url
from hub.storage.api import Conflict, SSOStates
from remoteler.errors import UsageError

log = logging.getLogger("hub.sso.saml")
# pysaml2 logs whole assertions (attributes, NameID) at DEBUG and INFO.
logging.getLogger("saml2").setLevel(logging.WARNING)

#: the connector document's keys this module reads (``attributes_to_roles``: the flow's)
SAML_KEYS = frozenset(
    {
        "entity_id",
        "idp_metadata_url",
        "idp_metadata",
        "attributes_to_roles",
        "username_attribute",
        "assertion_signed",
    }
)
MAX_METADATA_BYTES = 1 << 20
METADATA_TIMEOUT = 10.0
#: a SAMLResponse form field longer than this (base64) is refused unread
MAX_RESPONSE_CHARS = 512 * 1024
#: an assertion valid for longer is refused: its ID would hold a replay slot as long
MAX_ASSERTION_LIFETIME = 24 * 3600.0
REPLAY_CAP = 100_000
MAX_ID_CHARS = 256

Fetch = Callable[[str], Awaitable[bytes]]


# -- the connector document ---------------------------------------------------------


def parse_saml(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Check the SAML keys of a connector document; the spec for :class:`SAMLProvider`.

    Keys other than :data:`SAML_KEYS` are the caller's to check. Raises a one-line
    :class:`UsageError` naming the key at fault.
    """
    entity_id = doc.get("entity_id")
    if entity_id is not None and (
        not isinstance(entity_id, str) or not entity_id.strip() or len(entity_id) > 1024
    ):
        raise UsageError(
            "entity_id must be a URI such as https://hub.example.com/web/sso/saml/okta"
        )
    url, metadata = doc.get("idp_metadata_url"), doc.get("idp_metadata")
    if url is not None and metadata is not None:
        raise UsageError("give idp_metadata_url or idp_metadata (idp_metadata_file), not both")
    if url is None and metadata is None:
        raise UsageError("idp_metadata_url (or idp_metadata_file) is required: the IdP's metadata")
    if url is not None:
        url = check_url(url, "idp_metadata_url")
    if metadata is not None:
        if not isinstance(metadata, str) or not metadata.strip():
            raise UsageError("idp_metadata must be the IdP's metadata XML")
        if len(metadata.encode()) > MAX_METADATA_BYTES:
            raise UsageError("idp_metadata is larger than 1 MiB; give the metadata of one IdP")
        read_idp_metadata(metadata, "idp_metadata")
    username_attribute = doc.get("username_attribute")
    if username_attribute is not None and (
        not isinstance(username_attribute, str) or not username_attribute.strip()
    ):
        raise UsageError('username_attribute must name an attribute, such as "email"')
    signed = doc.get("assertion_signed", True)
    if signed is not True:
        raise UsageError(
            "assertion_signed cannot be turned off: the hub requires signed assertions"
        )
    return {
        "entity_id": entity_id,
        "idp_metadata_url": url,
        "idp_metadata": metadata,
        "username_attribute": username_attribute,
    }


# -- IdP metadata -------------------------------------------------------------------


@dataclass(frozen=True)
class IdpMetadata:
    """What the hub uses of an IdP's metadata, checked."""

    #: the IdP's entity id (the assertions' Issuer)
    entity_id: str
    #: its SingleSignOnService for the HTTP-Redirect binding
    sso_url: str
    #: the metadata XML itself, for pysaml2
    xml: str


def _sp_config(entity_id: str, acs_url: str, metadata_xml: str | None, xmlsec: bool = True) -> Any:
    conf: dict[str, Any] = {
        "entityid": entity_id,
        "service": {
            "sp": {
                "endpoints": {"assertion_consumer_service": [(acs_url, BINDING_HTTP_POST)]},
                "want_assertions_signed": True,
                "want_response_signed": False,
                "allow_unsolicited": False,
                "authn_requests_signed": False,
                "allow_unknown_attributes": True,
            }
        },
        "accepted_time_diff": int(CLOCK_SKEW),
        "allow_unknown_attributes": True,
    }
    if metadata_xml is not None:
        conf["metadata"] = {"inline": [metadata_xml]}
    binary = shutil.which("xmlsec1") if xmlsec else None
    if binary is not None:
        conf["xmlsec_binary"] = binary
    config = SPConfig()
    config.load(conf)
    return config


def read_idp_metadata(xml: str, key: str) -> IdpMetadata:
    """The one IdP ``xml`` describes, with an HTTP-Redirect SSO endpoint (https, or http
    on loopback) and a signing certificate; a one-line :class:`UsageError` naming
    ``key`` otherwise."""
    try:
        config = _sp_config("urn:remoteler:metadata-check", "https://localhost/", xml)
    except ToOld:
        raise UsageError(f"{key} has expired (validUntil); get the IdP's new metadata") from None
    except Exception as exc:
        raise UsageError(f"{key} is not readable SAML metadata ({type(exc).__name__})") from None
    store = config.metadata
    idps = sorted(store.identity_providers())
    if not idps and any(getattr(source, "to_old", None) for source in store.metadata.values()):
        raise UsageError(f"{key} has expired (validUntil); get the IdP's new metadata")
    if len(idps) != 1:
        raise UsageError(f"{key} must describe one identity provider; it describes {len(idps)}")
    entity_id = idps[0]
    try:
        services = store.single_sign_on_service(entity_id, BINDING_HTTP_REDIRECT)
    except UnsupportedBinding:
        services = None
    if not services:
        raise UsageError(f"{key}: the IdP has no SingleSignOnService for the HTTP-Redirect binding")
    sso_url = check_url(services[0].get("location"), f"{key} SingleSignOnService")
    if not store.certs(entity_id, "idpsso", use="signing"):
        raise UsageError(f"{key}: the IdP's metadata has no signing certificate")
    return IdpMetadata(entity_id=entity_id, sso_url=sso_url, xml=xml)


async def fetch_metadata(url: str) -> bytes:
    """GET ``url`` (10 s, 1 MiB at most, no redirects); :class:`SSOError` on failure."""
    timeout = aiohttp.ClientTimeout(total=METADATA_TIMEOUT)
    try:
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.get(url, allow_redirects=False) as r,
        ):
            if r.status != 200:
                raise SSOError(f"HTTP {r.status}")
            return await read_capped(r, "larger than 1 MiB", MAX_METADATA_BYTES)
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise SSOError(type(exc).__name__) from None


def sp_metadata(entity_id: str, acs_url: str) -> str:
    """The hub's SP metadata XML for an IdP admin: the entity id, the ACS URL (HTTP-POST)
    and WantAssertionsSigned."""
    descriptor = entity_descriptor(_sp_config(entity_id, acs_url, None, xmlsec=False))
    return str(descriptor.to_string().decode())


# -- checking a response (synchronous: pysaml2 runs xmlsec1) ------------------------


@dataclass(frozen=True)
class Verified:
    """A response that passed every check but replay."""

    assertion_id: str
    #: until when the assertion could be accepted (its earliest NotOnOrAfter + skew)
    expires: float
    name_id: str
    claims: dict[str, tuple[str, ...]]


def _instant(value: str | None, what: str) -> float | None:
    if not value:
        return None
    try:
        return float(calendar.timegm(str_to_time(value)))
    except (ValueError, AttributeError, TypeError):
        raise SSOError(f"the identity provider's {what} is not a time") from None


def _explain(exc: BaseException) -> str:
    """One line for the user from a pysaml2 refusal."""
    text = str(exc)
    if isinstance(exc, SignatureError) and "missing" in text.lower():
        return "the identity provider's assertion is not signed; configure it to sign assertions"
    if isinstance(exc, (SignatureError, IncorrectlySigned, SigverError)):
        return "the identity provider's response failed its signature check"
    if isinstance(exc, UnsolicitedResponse) or "requestURI I don't recall" in text:
        return "the identity provider's response does not answer this login; sign in again"
    if isinstance(exc, (ResponseLifetimeExceed, ToEarly)):
        return "the identity provider's response has expired or is not valid yet; check clocks"
    if "AudienceRestriction" in text:
        return "the identity provider's response is for another service provider (audience)"
    if isinstance(exc, VerificationError) and "recipient" in text.lower():
        return "the identity provider's response is for another ACS URL (recipient)"
    if isinstance(exc, StatusError):
        code = type(exc).__name__.removeprefix("Status").removesuffix("Error") or "an error"
        return f"the identity provider refused the login ({code} status)"
    return "the identity provider's response was refused"


def _precheck(saml_response: str, *, request_id: str, acs_url: str) -> None:
    """Refuse early, with a precise message, what is plainly not for this login. Reads
    the response unverified: it may only refuse (pysaml2 then checks everything)."""
    try:
        xml = base64.b64decode("".join(saml_response.split()), validate=True)
        outer = response_from_string(xml)
    except Exception:
        raise SSOError("the identity provider's response is not a SAML Response") from None
    if outer is None:
        raise SSOError("the identity provider's response is not a SAML Response")
    if outer.destination is not None and outer.destination != acs_url:
        raise SSOError("the identity provider's response is for another ACS URL (recipient)")
    if outer.in_response_to != request_id:
        raise SSOError("the identity provider's response does not answer this login; sign in again")


def check_response(
    config: Any,
    idp: IdpMetadata,
    saml_response: str,
    *,
    request_id: str,
    entity_id: str,
    acs_url: str,
    now: float,
) -> Verified:
    """Check a base64 SAMLResponse (HTTP-POST binding) answering ``request_id``;
    :class:`SSOError` with one line for the user when anything is wrong."""
    _precheck(saml_response, request_id=request_id, acs_url=acs_url)
    client = Saml2Client(config=config)  # one per response: its user cache grows
    try:
        response = client.parse_authn_request_response(
            saml_response, BINDING_HTTP_POST, outstanding={request_id: ""}
        )
    except Exception as exc:
        log.info("SAML response refused by pysaml2: %s", type(exc).__name__)
        raise SSOError(_explain(exc)) from None
    if response is None or response.assertion is None:
        raise SSOError(
            "the identity provider's response was refused: not for this ACS URL or this login"
        )
    outer = response.response
    assertion = response.assertion
    # pysaml2 checked these when present; the profile requires them present.
    if assertion.signature is None:
        raise SSOError(
            "the identity provider's assertion is not signed; configure it to sign assertions"
        )
    issuers = [assertion.issuer] + ([outer.issuer] if outer.issuer is not None else [])
    if any(i is None or (i.text or "").strip() != idp.entity_id for i in issuers):
        raise SSOError("the response is not from the identity provider in the connector's metadata")
    if outer.destination is not None and outer.destination != acs_url:
        raise SSOError("the identity provider's response is for another ACS URL (recipient)")
    if outer.in_response_to != request_id:
        raise SSOError("the identity provider's response does not answer this login; sign in again")
    conditions = assertion.conditions
    restrictions = conditions.audience_restriction if conditions is not None else []
    if not restrictions or not all(
        any((a.text or "").strip() == entity_id for a in r.audience or []) for r in restrictions
    ):
        raise SSOError(
            "the identity provider's response is for another service provider (audience)"
        )
    ends: list[float] = []
    starts: list[float] = []
    bearer = [
        sc.subject_confirmation_data
        for sc in (assertion.subject.subject_confirmation if assertion.subject else [])
        if sc.method == SCM_BEARER
    ]
    if not bearer or any(d is None for d in bearer):
        raise SSOError("the identity provider's assertion has no bearer subject confirmation")
    for data in bearer:
        if data.recipient != acs_url:
            raise SSOError("the identity provider's response is for another ACS URL (recipient)")
        if data.in_response_to != request_id:
            raise SSOError(
                "the identity provider's response does not answer this login; sign in again"
            )
        end = _instant(data.not_on_or_after, "SubjectConfirmationData NotOnOrAfter")
        if end is None:
            raise SSOError("the identity provider's assertion has no NotOnOrAfter")
        ends.append(end)
        start = _instant(data.not_before, "SubjectConfirmationData NotBefore")
        if start is not None:
            starts.append(start)
    end = _instant(conditions.not_on_or_after, "Conditions NotOnOrAfter")
    if end is not None:
        ends.append(end)
    start = _instant(conditions.not_before, "Conditions NotBefore")
    if start is not None:
        starts.append(start)
    if any(now >= e + CLOCK_SKEW for e in ends) or any(now < s - CLOCK_SKEW for s in starts):
        raise SSOError(
            "the identity provider's response has expired or is not valid yet; check clocks"
        )
    if min(ends) > now + MAX_ASSERTION_LIFETIME:
        raise SSOError("the identity provider's assertion is valid for over a day; shorten it")
    assertion_id = assertion.id or ""
    if not assertion_id or len(assertion_id) > MAX_ID_CHARS:
        raise SSOError("the identity provider's assertion has no usable ID")
    name_id = assertion.subject.name_id
    claims: dict[str, tuple[str, ...]] = {}
    for statement in assertion.attribute_statement or []:
        for attribute in statement.attribute or []:
            values = tuple((v.text or "").strip() for v in attribute.attribute_value or [])
            for key in {attribute.name, attribute.friendly_name} - {None, ""}:
                claims[key] = claims.get(key, ()) + values
    return Verified(
        assertion_id=assertion_id,
        expires=min(ends) + CLOCK_SKEW,
        name_id=(name_id.text or "").strip() if name_id is not None else "",
        claims=claims,
    )


# -- the provider -------------------------------------------------------------------


class SAMLProvider:
    """A SAML connector (:class:`hub.sso.provider.Provider`).

    ``spec`` comes from :func:`parse_saml`; ``entity_id`` and ``acs_url`` are the hub's
    (the flow's defaults: ``https://HUB/web/sso/saml/NAME`` and ``https://HUB/web/sso/acs``);
    ``states`` remembers used assertion IDs across the cluster; ``fetch`` GETs the
    metadata URL (once: restart the hub or update the connector after the IdP rotates
    its signing certificate).
    """

    def __init__(
        self,
        name: str,
        spec: Mapping[str, Any],
        *,
        entity_id: str,
        acs_url: str,
        states: SSOStates,
        clock: Callable[[], float] = time.time,
        fetch: Fetch | None = None,
    ) -> None:
        self.name = name
        self.entity_id = entity_id
        self.acs_url = acs_url
        self._spec = dict(spec)
        self._states = states
        self._clock = clock
        self._fetch = fetch or fetch_metadata
        self._lock = asyncio.Lock()
        self._idp: IdpMetadata | None = None
        self._config: Any = None

    async def _load(self) -> tuple[IdpMetadata, Any]:
        async with self._lock:
            if self._idp is None:
                if shutil.which("xmlsec1") is None:
                    log.error("xmlsec1 is not installed: apt-get install xmlsec1")
                    raise SSOError("SAML sign-in is not available on this hub (xmlsec1 missing)")
                xml = self._spec.get("idp_metadata")
                key = "idp_metadata"
                if xml is None:
                    url = str(self._spec["idp_metadata_url"])
                    key = "idp_metadata_url"
                    try:
                        body = await self._fetch(url)
                    except SSOError as exc:
                        log.warning("connector %s: metadata fetch failed: %s", self.name, exc)
                        raise SSOError(
                            f"could not fetch the identity provider's metadata ({exc})"
                        ) from None
                    if len(body) > MAX_METADATA_BYTES:
                        raise SSOError("the identity provider's metadata is larger than 1 MiB")
                    xml = body.decode("utf-8", "replace")
                idp, config = await asyncio.to_thread(self._read, xml, key)
                self._idp, self._config = idp, config
            return self._idp, self._config

    def _read(self, xml: str, key: str) -> tuple[IdpMetadata, Any]:
        try:
            idp = read_idp_metadata(xml, key)
        except UsageError as exc:
            raise SSOError(f"connector {self.name}: {exc}") from None
        return idp, _sp_config(self.entity_id, self.acs_url, xml)

    async def begin(self, pending: Pending, callback_url: str) -> Redirect:
        """An AuthnRequest to the IdP (HTTP-Redirect, RelayState = ``pending.state``).
        Keep :attr:`Redirect.request_id` as the pending login's ``request_id``.
        ``callback_url`` is not used: the ACS URL is ``acs_url``."""
        idp, config = await self._load()

        def make() -> tuple[str, str]:
            client = Saml2Client(config=config)
            request_id, info = client.prepare_for_authenticate(
                entityid=idp.entity_id, relay_state=pending.state, binding=BINDING_HTTP_REDIRECT
            )
            return str(request_id), str(dict(info["headers"])["Location"])

        request_id, url = await asyncio.to_thread(make)
        return Redirect(url=url, request_id=request_id)

    async def finish(
        self, pending: Pending, params: Mapping[str, str], callback_url: str
    ) -> Identity:
        """Check the IdP's POST to the ACS (``SAMLResponse``, ``RelayState``)."""
        relay = params.get("RelayState", "")
        if not hmac.compare_digest(relay.encode(), pending.state.encode()):
            raise SSOError("the identity provider's answer is not for this login; sign in again")
        saml_response = params.get("SAMLResponse", "")
        if not saml_response:
            raise SSOError("the identity provider sent no SAMLResponse; sign in again")
        if len(saml_response) > MAX_RESPONSE_CHARS:
            raise SSOError("the identity provider's response is too large")
        if not pending.request_id:
            raise SSOError("this login sent no SAML request; sign in again")
        idp, config = await self._load()
        now = self._clock()
        verified = await asyncio.to_thread(
            check_response,
            config,
            idp,
            saml_response,
            request_id=pending.request_id,
            entity_id=self.entity_id,
            acs_url=self.acs_url,
            now=now,
        )
        try:
            stored = await self._states.add(
                "saml-assertion:" + verified.assertion_id, "", verified.expires, now, REPLAY_CAP
            )
        except Conflict:
            log.warning("connector %s: assertion %s replayed", self.name, verified.assertion_id)
            raise SSOError(
                "this identity provider response was used already; sign in again"
            ) from None
        if not stored:
            log.warning(
                "connector %s: %d SAML assertion ids stored: refusing", self.name, REPLAY_CAP
            )
            raise SSOError("the hub has too many SSO logins in progress; try again in a minute")
        attribute = self._spec.get("username_attribute")
        if attribute:
            values = [v for v in verified.claims.get(attribute, ()) if v]
            if not values:
                raise SSOError(
                    f"the identity provider sent no {attribute} attribute (username_attribute)"
                )
            username = values[0]
        else:
            username = verified.name_id
        if not username:
            raise SSOError("the identity provider's assertion names no user (NameID)")
        log.info("connector %s: assertion %s accepted", self.name, verified.assertion_id)
        return Identity(username=username, claims=verified.claims, subject=verified.name_id)
