"""What every SSO protocol module gives the login flow (hub/sso/flow.py).

A login is two steps across a browser round trip:

1. :meth:`Provider.begin` gets the pending login's secrets (``state``, ``nonce``, the
   PKCE challenge) and the hub's callback URL, and says where to send the browser.
2. The browser comes back to the callback with the provider's answer;
   :meth:`Provider.finish` checks it all (signatures, audience, expiry, nonce...) and
   returns who the user is and what the provider says about them, or raises
   :class:`SSOError` with one line for the user.

The flow owns ``state`` (single use, stored in ``Storage.sso``), the mapping to roles
(hub/sso/mapping.py), and issuing certificates.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

from remoteler import b64url
from remoteler.errors import AuthError

#: Allowance for the clocks of the hub and the provider (ID token ``iat``/``exp``,
#: SAML ``NotBefore``/``NotOnOrAfter``); docs/sso.md.
CLOCK_SKEW = 60.0


def pkce_challenge(code_verifier: str) -> str:
    """RFC 7636 4.2, S256: BASE64URL(SHA256(verifier)) without padding (OIDC, GitHub)."""
    digest = hashlib.sha256(code_verifier.encode("ascii")).digest()
    return b64url.encode(digest)


class SSOError(AuthError):
    """A login the provider or the hub refused; the message is one line for the user."""


@dataclass(frozen=True)
class Pending:
    """A login's secrets, made by the flow in :meth:`Provider.begin`'s caller."""

    #: sent to the provider and checked on return (OIDC/GitHub ``state``, SAML RelayState)
    state: str
    #: OIDC ``nonce`` (checked in the ID token); SAML: the AuthnRequest ID to expect in
    #: ``InResponseTo`` is what ``begin`` returns in :attr:`Redirect.request_id`
    nonce: str
    #: PKCE code verifier (RFC 7636, S256)
    code_verifier: str
    #: SAML: the AuthnRequest's ID that ``begin`` made; "" before
    request_id: str = ""


@dataclass(frozen=True)
class Redirect:
    """Where ``begin`` sends the browser: a GET to ``url``."""

    url: str
    #: SAML: the AuthnRequest's ID (kept with the pending login for ``InResponseTo``)
    request_id: str = ""


@dataclass(frozen=True)
class Identity:
    """Who logged in, as the provider vouches.

    ``claims`` holds every claim, attribute or team as a tuple of strings (lists
    flattened, numbers and booleans as text); the mapping to roles and the
    ``{{external.NAME}}`` traits come from it.
    """

    username: str
    claims: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    #: for the audit event: the provider's subject (OIDC ``sub``, SAML NameID, GitHub id)
    subject: str = ""


class Provider(Protocol):
    async def begin(self, pending: Pending, callback_url: str) -> Redirect: ...

    async def finish(
        self, pending: Pending, params: Mapping[str, str], callback_url: str
    ) -> Identity:
        """``params``: the callback's query (OIDC, GitHub) or form (SAML POST binding)."""
        ...
