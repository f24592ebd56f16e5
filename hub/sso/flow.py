"""An SSO login from start to certificates, for ``tsh login --auth`` and the web console.

1. :meth:`SSOService.start` makes a pending login (``state``, ``nonce``, PKCE verifier;
   for tsh also its public key, its loopback URL and the key to seal the answer with),
   stores it in ``Storage.sso`` for :data:`PENDING_TTL` (any hub of the cluster can
   finish it), and asks the connector's provider where to send the browser.
2. The browser comes back to ``/web/sso/callback`` (OIDC, GitHub) or ``/web/sso/acs``
   (SAML). :meth:`SSOService.finish` takes the pending login by its state (single use:
   a replayed state finds nothing), lets the provider check the answer, maps the claims
   to roles (hub/sso/mapping.py), creates or refreshes the SSO user, checks locks, and
   issues certificates: for tsh sealed to its key (remoteler/ssoseal.py) in a redirect
   to its listener; for the web console a new web session.

Caps: :data:`MAX_PENDING` pending logins in the cluster and
:data:`MAX_PENDING_PER_ADDR` per client address at this hub, each for
:data:`PENDING_TTL` seconds.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any
from urllib.parse import urlencode, urlsplit

from hub.auth.service import AuthService, Issued, check_name
from hub.net.admission import source_key
from hub.sso.connectors import DEFAULT_CONNECTOR_KEY, LOCAL, Connector, from_stored
from hub.sso.mapping import flatten_claims, roles_or_refuse
from hub.sso.provider import Identity, Pending, Provider, SSOError
from hub.storage.api import Storage, User
from remoteler.audit.events import EventType
from remoteler.ca import public_key_from_openssh
from remoteler.ca.errors import CAError
from remoteler.errors import ConfigError, UsageError
from remoteler.ssoseal import decode_key, seal

log = logging.getLogger("remoteler.hub.sso")

PENDING_TTL = 600.0
MAX_PENDING = 10_000
MAX_PENDING_PER_ADDR = 20
MAX_ADDRS = 10_000
CALLBACK_PATH = "/web/sso/callback"
ACS_PATH = "/web/sso/acs"
START_PATH = "/web/sso/start/"
BUSY = "the hub has too many logins in progress; try again in a few minutes"
#: the trait that binds an SSO user record to one identity: (connector, this subject)
SUBJECT_TRAIT = "remoteler.subject"


@dataclass(frozen=True)
class Done:
    """A finished login: who, and where the browser goes next."""

    mode: str  # "tsh" or "web"
    user: str
    connector: str
    #: tsh: the redirect to its listener (the certificates sealed in it)
    redirect: str = ""
    #: web: the session's key and certificates
    identity: Any = None
    expires: float = 0.0


class _AddressCounts:
    """Pending logins started per client address in the last PENDING_TTL (bounded)."""

    def __init__(self) -> None:
        self._seen: OrderedDict[str, list[float]] = OrderedDict()

    def take(self, addr: str, now: float) -> bool:
        addr = source_key(addr)  # as every per-address limit: an IPv6 host by its /64
        times = [t for t in self._seen.pop(addr, []) if now - t < PENDING_TTL]
        ok = len(times) < MAX_PENDING_PER_ADDR
        if ok:
            times.append(now)
        self._seen[addr] = times
        while len(self._seen) > MAX_ADDRS:
            self._seen.popitem(last=False)
        return ok


def check_redirect(url: object) -> str:
    """tsh's listener: ``http://127.0.0.1:PORT/callback`` (loopback only, nothing else in
    the URL: no user part, query or fragment)."""
    bad = UsageError("redirect_url must be tsh's http://127.0.0.1:PORT/callback")
    if not isinstance(url, str) or len(url) > 200 or any(c in url for c in "@\\ \t\r\n"):
        raise bad
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise bad from None
    if parts.scheme != "http" or parts.hostname not in ("127.0.0.1", "::1", "localhost"):
        raise bad
    if parts.path != "/callback" or parts.query or parts.fragment or not port:
        raise bad
    return url


def binding_hash(cookie: str) -> str:
    return hashlib.sha256(cookie.encode()).hexdigest()


class SSOService:
    def __init__(
        self,
        storage: Storage,
        auth: AuthService,
        public_url: Callable[[], str],
        *,
        seal_secret: Callable[[str, str], str] | None = None,
        unseal_secret: Callable[[str, str], str] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.storage = storage
        self.auth = auth
        self.public_url = public_url
        self.seal_secret = seal_secret
        self.unseal_secret = unseal_secret
        self.clock = clock
        self._addrs = _AddressCounts()
        self._providers: dict[str, tuple[str, Provider]] = {}
        self._default: str | None = None
        self._default_at = -5.0

    # connectors ---------------------------------------------------------------------
    async def connector(self, name: str) -> tuple[Connector, str]:
        row = await self.storage.connectors.get(name) if len(name) <= 64 else None
        if row is None:
            raise SSOError(f"no SSO connector {name[:64]!r}: see 'tctl get connectors'")
        try:  # unsealing the secret may derive a key (scrypt): not on the event loop
            connector = await asyncio.to_thread(from_stored, row, self.unseal_secret)
        except ConfigError:
            log.error("connector %s: its client secret does not decrypt", row.name)
            raise SSOError(
                f"connector {row.name!r} cannot be used: its client secret does not decrypt "
                "with this hub's CA passphrase; ask an admin to check it"
            ) from None
        return connector, row.spec

    async def listing(self) -> list[dict[str, str]]:
        """For login pages: each connector's name, kind and display name."""
        rows = await self.storage.connectors.all()
        out = []
        for row in rows:
            body = json.loads(row.spec)
            out.append({"name": row.name, "kind": row.kind, "display": body.get("display", "")})
        return out

    async def default(self) -> str | None:
        """The cluster's default connector (``tctl create`` of an auth_preference),
        read at most every 5 s: every ``tsh login`` and agent ping asks."""
        now = self.clock()
        if now - self._default_at >= 5.0 or now < self._default_at:
            name = await self.storage.settings.get(DEFAULT_CONNECTOR_KEY)
            self._default = name if name and name != LOCAL else None
            self._default_at = now
        return self._default

    def forget_default(self) -> None:
        """The default connector changed here: read it again at the next ask (other hubs
        of the cluster see it within 5 s)."""
        self._default_at = -5.0

    def callback_url(self, kind: str) -> str:
        return self.public_url() + (ACS_PATH if kind == "saml" else CALLBACK_PATH)

    def provider(self, connector: Connector, version: str) -> Provider:
        cached = self._providers.get(connector.name)
        if cached is not None and cached[0] == version:
            return cached[1]
        provider: Provider
        if connector.kind == "oidc":
            from hub.sso.oidc import OIDCProvider

            provider = OIDCProvider(
                connector.name, connector.spec, connector.client_secret, clock=self.clock
            )
        elif connector.kind == "github":
            from hub.sso.github import GitHubProvider

            provider = GitHubProvider(connector.name, connector.spec, connector.client_secret or "")
        else:
            from hub.sso.saml import SAMLProvider

            entity_id = connector.spec.get("entity_id") or (
                f"{self.public_url()}/web/sso/saml/{connector.name}"
            )
            provider = SAMLProvider(
                connector.name,
                connector.spec,
                entity_id=entity_id,
                acs_url=self.callback_url("saml"),
                states=self.storage.sso,
                clock=self.clock,
            )
        self._providers[connector.name] = (version, provider)
        return provider

    # start ----------------------------------------------------------------------------
    async def start(
        self,
        name: str,
        *,
        mode: str,
        remote_addr: str,
        public_key: str = "",
        client_key: str = "",
        redirect_url: str = "",
        ttl: int | None = None,
        binding: str = "",
    ) -> tuple[str, str]:
        """A new pending login; (request id, the URL to send the browser to)."""
        connector, version = await self.connector(name)
        if mode == "tsh":
            try:
                decode_key(client_key)
            except ValueError:
                raise UsageError("client_key must be 32 bytes, base64url (tsh makes it)") from None
            check_redirect(redirect_url)
            try:  # before the browser round trip: a bad key would fail only at the end
                public_key_from_openssh(public_key)
            except CAError as exc:
                raise UsageError(f"bad public key: {exc}") from None
        now = self.clock()
        if not self._addrs.take(remote_addr, now):
            raise SSOError("too many logins started from your address; wait a few minutes")
        pending = Pending(
            state=secrets.token_urlsafe(32),
            nonce=secrets.token_urlsafe(32),
            code_verifier=secrets.token_urlsafe(48),
        )
        provider = self.provider(connector, version)
        target = await provider.begin(pending, self.callback_url(connector.kind))
        request_id = secrets.token_urlsafe(24)
        record = {
            "id": request_id,
            "connector": connector.name,
            "mode": mode,
            "state": pending.state,
            "nonce": pending.nonce,
            "verifier": pending.code_verifier,
            "authn_id": target.request_id,
            "public_key": public_key,
            "client_key": client_key,
            "redirect_url": redirect_url,
            "ttl": ttl,
            "binding": binding_hash(binding) if binding else "",
            "remote_addr": remote_addr,
            "created": now,
        }
        expires = now + PENDING_TTL
        if not await self.storage.sso.add(
            "state:" + pending.state, json.dumps(record), expires, now, MAX_PENDING
        ):
            raise SSOError(BUSY)
        if mode == "tsh":  # the browser opens the hub, which sends it on to the provider
            if not await self.storage.sso.add(
                "start:" + request_id, target.url, expires, now, MAX_PENDING
            ):
                raise SSOError(BUSY)
            return request_id, self.public_url() + START_PATH + request_id
        return request_id, target.url

    async def open_start(self, request_id: str) -> str:
        """Where ``/web/sso/start/ID`` sends the browser (once)."""
        url = await self.storage.sso.take("start:" + request_id[:64], self.clock())
        if url is None:
            raise SSOError("this login link was used already or has expired: run 'tsh login' again")
        return url

    # finish ---------------------------------------------------------------------------
    async def pending(self, params: Mapping[str, str]) -> dict[str, Any]:
        state = params.get("state") or params.get("RelayState") or ""
        raw = await self.storage.sso.take("state:" + state[:128], self.clock()) if state else None
        if raw is None:
            raise SSOError(
                "this login was finished already or has expired (or was not started here): "
                "start the login again"
            )
        record: dict[str, Any] = json.loads(raw)
        return record

    async def finish(
        self, record: dict[str, Any], params: Mapping[str, str], binding: str, remote_addr: str
    ) -> Done:
        """Check the provider's answer for the pending login ``record`` (from
        :meth:`pending`) and issue certificates. Refusals are SSOError/AccessDenied."""
        if record["mode"] == "web" and not (
            binding and hmac.compare_digest(binding_hash(binding), record["binding"])
        ):
            raise SSOError("this login was started in another browser: start it again here")
        connector, version = await self.connector(record["connector"])
        provider = self.provider(connector, version)
        pending = Pending(
            record["state"], record["nonce"], record["verifier"], record.get("authn_id", "")
        )
        identity = await provider.finish(pending, params, self.callback_url(connector.kind))
        return await self._issue(connector, identity, record, remote_addr)

    async def _issue(
        self, connector: Connector, identity: Identity, record: dict[str, Any], remote_addr: str
    ) -> Done:
        name = identity.username
        try:
            check_name("user", name)
        except UsageError:
            raise SSOError(
                f"the identity provider's user name {name[:64]!r} cannot be a user name here "
                f"(letters, digits, '.', '-', '_'): set username_claim in connector "
                f"{connector.name!r}"
            ) from None
        claims = flatten_claims(identity.claims)  # capped, whatever the kind
        claims.pop(SUBJECT_TRAIT, None)  # ours, never the provider's
        roles = roles_or_refuse(name, connector.name, connector.rules, claims)
        known = [r for r in roles if await self.storage.roles.get(r) is not None]
        if not known:
            raise SSOError(
                f"the roles mapped for {name!r} ({', '.join(roles)}) do not exist: ask an admin "
                "to create them (tctl create -f role.toml)"
            )
        now = self.clock()
        subject = (identity.subject or name)[:256]
        existing = await self.storage.users.get(name)
        expires = now + PENDING_TTL
        if existing is not None:
            if existing.connector is None:
                raise SSOError(
                    f"a local user named {name!r} exists already: an admin must remove it or "
                    "rename one of them"
                )
            same = existing.connector == connector.name and tuple(
                existing.traits.get(SUBJECT_TRAIT, ())
            ) == (subject,)
            live = existing.expires is not None and existing.expires > now
            if live and not same:  # the name is another identity's while its certificates last
                raise SSOError(
                    f"the user name {name!r} belongs to another identity (from connector "
                    f"{existing.connector!r}) while its certificates are valid: ask an admin "
                    f"to remove it (tctl users rm {name})"
                )
            if live and existing.expires is not None:
                expires = max(expires, existing.expires)
        user = User(
            name=name,
            roles=tuple(known),
            logins=(),
            password_hash=None,
            totp_secret=None,
            totp_last_step=0,
            created=existing.created if existing is not None else now,
            connector=connector.name,
            traits={**claims, SUBJECT_TRAIT: (subject,)},
            expires=expires,
        )
        await self.auth.check_user_lock(name, remote_addr)  # audited as a refusal
        key = None
        public_key = record.get("public_key") or ""
        if record["mode"] == "web":
            from remoteler.ca import generate_private_key, public_key_to_openssh

            key = generate_private_key()
            public_key = public_key_to_openssh(key.public_key())
        await self.storage.users.put(user)
        issued = await self.auth.issue_user_certs(user, public_key, record.get("ttl"))
        # the record lasts as long as the longest certificate issued to this identity
        await self.storage.users.put(replace(user, expires=max(expires, float(issued.expires))))
        log.info(
            "sso login",
            extra={"user": name, "connector": connector.name, "remote_addr": remote_addr},
        )
        await self.auth.record(
            EventType.USER_LOGIN,
            user=name,
            success=True,
            method=f"sso:{connector.kind}",
            connector=connector.name,
            roles=list(known),
            subject=identity.subject[:256],
            remote_addr=remote_addr,
        )
        if record["mode"] == "web":
            return Done("web", name, connector.name, identity=(key, issued), expires=issued.expires)
        return Done("tsh", name, connector.name, redirect=self._sealed(record, name, issued))

    def _sealed(self, record: dict[str, Any], user: str, issued: Issued) -> str:
        payload = {
            "user": user,
            "ssh_cert": issued.ssh_cert,
            "tls_cert": issued.tls_cert,
            "expires": issued.expires,
            "logins": list(issued.logins),
        }
        box = seal(decode_key(record["client_key"]), record["id"], payload)
        return str(record["redirect_url"]) + "?" + urlencode({"response": box})

    async def refused(
        self,
        record: dict[str, Any] | None,
        reason: str,
        remote_addr: str,
        log_reason: str | None = None,
    ) -> str | None:
        """Log and audit a refused SSO login (``log_reason``: what the log and the audit
        say, when ``reason`` shows the user what the provider sent); tsh's listener URL
        with ``reason``, if tsh started it. An answer for no pending login (forged,
        replayed, lapsed) is logged at debug level only: anyone can send those."""
        if record is None:
            log.debug("sso answer for no pending login", extra={"remote_addr": remote_addr})
            return None
        said = (log_reason or reason)[:300]
        log.warning(
            "sso login refused: %s",
            said,
            extra={"connector": record["connector"], "remote_addr": remote_addr},
        )
        await self.auth.record(
            EventType.USER_LOGIN,
            user="",
            success=False,
            reason=said,
            method="sso",
            connector=record["connector"],
            remote_addr=remote_addr,
        )
        if record.get("mode") == "tsh":
            return str(record["redirect_url"]) + "?" + urlencode({"error": reason[:500]})
        return None

    # upkeep ---------------------------------------------------------------------------
    async def prune(self) -> tuple[int, int]:
        """Delete lapsed pending logins and SSO users whose certificates ended."""
        now = self.clock()
        states = await self.storage.sso.prune(now, 1000)
        users = 0
        for user in await self.storage.users.all():
            if user.connector is not None and user.expires is not None and user.expires < now:
                again = await self.storage.users.get(user.name)  # a login meanwhile renews it
                if again is not None and again.expires is not None and again.expires < now:
                    users += await self.storage.users.delete(user.name)
        return states, users
