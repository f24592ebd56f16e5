"""The hub's auth role: users, join tokens, logins and certificate issuance."""

from __future__ import annotations

import logging
import re
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, NoReturn

from hub.audit.budget import AuditBudget
from hub.auth import secrets as hs
from hub.auth.hashgate import BUSY_MESSAGE, BUSY_REASON, HashGate, HubBusy
from hub.auth.joinguard import JoinGuard, JoinRefused
from hub.auth.ratelimit import LoginGuard, LoginRefused
from hub.storage.api import AuditLog, Conflict, Node, Storage, Token, User
from remoteler.access import (
    DEFAULT_MAX_TTL,
    ROLES_EXTENSION,
    RULES_EXTENSION,
    AccessRule,
    Role,
    allowed_logins,
    encode_rules,
    may_port_forward,
    resolve_rules,
)
from remoteler.audit.events import HUB_NODE, EventType, make_event
from remoteler.ca import DEFAULT_USER_EXTENSIONS, CertAuthority, public_key_from_openssh
from remoteler.ca.errors import CAError
from remoteler.errors import AccessDenied, AuthError, ConfigError, UsageError
from remoteler.locks import find_lock
from remoteler.roleopts import DISCONNECT_EXTENSION, disconnect_expired_cert

log = logging.getLogger("remoteler.hub.auth")

# Used with fullmatch only: "$" with match() would let a trailing newline through.
# ASCII: with IGNORECASE alone, [a-z] also matches four non-ASCII letters (the Kelvin sign...).
_NAME = re.compile(r"[a-z0-9][a-z0-9_.\-]{0,62}", re.IGNORECASE | re.ASCII)
_LOGIN = re.compile(r"[a-z_][a-z0-9_.\-]{0,31}\$?", re.IGNORECASE | re.ASCII)
LOGIN_FAILED = "login failed: wrong user name, password or one-time code; check them and try again"
INVITE_TTL = 24 * 3600
NODE_X509_TTL = 10 * 365 * 24 * 3600


def check_name(kind: str, name: str) -> str:
    if not _NAME.fullmatch(name):
        raise UsageError(
            f"bad {kind} name {name!r}: use letters, digits, '.', '-' or '_' (at most 63)"
        )
    return name


def check_logins(logins: Sequence[str]) -> tuple[str, ...]:
    for login in logins:
        if not _LOGIN.fullmatch(login):
            raise UsageError(f"bad login {login!r}: use a valid OS user name such as 'pi'")
    return tuple(logins)


def host_principals(node_id: str, name: str, cluster: str) -> list[str]:
    """A node's SSH host certificate principals.

    ``<name>.<cluster>`` is the host name OpenSSH checks through ``tsh config``
    (docs/openssh.md); ``tsh ssh`` checks the name.
    """
    return [node_id, name, f"{name}.{cluster}"]


def rules_of(user: User, roles: Sequence[Role]) -> tuple[list[AccessRule], int]:
    """``user``'s access rules from ``roles``, and the TTL cap (the smallest max_session_ttl)."""
    cap = min((r.max_session_ttl for r in roles), default=DEFAULT_MAX_TTL)
    return resolve_rules(roles, user.logins, user.traits), cap


@dataclass(frozen=True)
class Issued:
    ssh_cert: str
    tls_cert: str
    expires: int
    logins: tuple[str, ...]


class AuthService:
    def __init__(
        self,
        storage: Storage,
        user_ca: CertAuthority,
        host_ca: CertAuthority,
        cluster: str,
        clock: Callable[[], float] = time.time,
        audit: AuditLog | None = None,
        hash_gate: HashGate | None = None,
        join_guard: JoinGuard | None = None,
    ) -> None:
        self.storage = storage
        self.user_ca = user_ca
        self.host_ca = host_ca
        self.cluster = cluster
        self.clock = clock
        self.audit = audit
        self.guard = LoginGuard(storage, clock=clock)
        #: a hub-wide cap on Argon2 runs for logins and invites (hub/auth/hashgate.py)
        self.hash_gate = hash_gate or HashGate()
        #: rate limits on joins per address and hub-wide (hub/auth/joinguard.py)
        self.join_guard = join_guard or JoinGuard()
        #: join refusals by the limits are audited within this budget (hub/audit/budget.py)
        self.join_refusals = AuditBudget()
        #: so are login refusals by the limits and "hub busy"
        self.login_refusals = AuditBudget()

    async def _record(self, type: EventType, *, node: str = HUB_NODE, **kw: Any) -> None:
        """Durable before the caller gets what it records (a store error fails the call)."""
        if self.audit is not None:
            await self.audit.record(make_event(type, node=node, now=self.clock(), **kw))

    # users -------------------------------------------------------------
    async def add_user(
        self,
        name: str,
        roles: Sequence[str],
        logins: Sequence[str],
        password: str | None = None,
        totp_secret: str | None = None,
    ) -> tuple[User, str | None]:
        """Create a user; without a password return a one-time invite token."""
        check_name("user", name)
        if await self.storage.users.get(name):
            raise UsageError(f"user {name!r} already exists; pick another name or remove it first")
        for role in roles:
            if await self.storage.roles.get(role) is None:
                raise UsageError(f"role {role!r} does not exist; see 'tctl get roles'")
        if password is not None and len(password) < hs.MIN_PASSWORD:
            raise UsageError(f"password too short: use at least {hs.MIN_PASSWORD} characters")
        if totp_secret is not None:
            totp_secret = totp_secret.strip().replace(" ", "").upper()
            if not re.fullmatch(r"[A-Z2-7]{16,}=*", totp_secret):
                raise UsageError("bad TOTP secret: give a base32 string of at least 16 characters")
        password_hash = await hs.hash_password_async(password) if password is not None else None
        user = User(
            name=name,
            roles=tuple(roles),
            logins=check_logins(logins),
            password_hash=password_hash,
            totp_secret=totp_secret or hs.new_totp_secret(),
            totp_last_step=0,
            created=self.clock(),
        )
        await self.storage.users.put(user)
        invite = None
        if password is None:
            invite = hs.new_token()
            await self.storage.invites.add(hs.hash_token(invite), name, self.clock() + INVITE_TTL)
        log.info("user created", extra={"user": name, "roles": list(roles)})
        return user, invite

    async def invite_info(self, name: str, invite: str, remote_addr: str = "") -> dict[str, str]:
        self.guard.addresses.check(remote_addr, self.clock())
        user = await self._user_before_credentials(name)
        ok = await self.storage.invites.check(hs.hash_token(invite), name, self.clock())
        if not ok or user is None or user.totp_secret is None:
            raise AuthError(
                "invite not valid: it is wrong, used or expired; ask an admin for a new one"
            )
        return {
            "totp_secret": user.totp_secret,
            "totp_uri": hs.totp_uri(user.totp_secret, name, self.cluster),
        }

    async def accept_invite(
        self,
        name: str,
        invite: str,
        password: str,
        otp: str,
        public_key: str,
        ttl: int | None,
        remote_addr: str = "",
    ) -> Issued:
        try:
            await self.guard.check(name, remote_addr)
        except LoginRefused as err:
            await self._login_failed(name, remote_addr, err.reason, count=False, limited=True)
            raise
        try:
            info = await self.invite_info(name, invite)
        except AuthError:
            await self._login_failed(name, remote_addr, "invite not valid")
            raise
        if len(password) < hs.MIN_PASSWORD:
            raise UsageError(f"password too short: use at least {hs.MIN_PASSWORD} characters")
        try:  # before the code and the invite are used up: a busy hub costs neither
            password_hash = await self.hash_gate.run(
                lambda: hs.hash_password_async(password),
                priority=self.guard.trusted(remote_addr),
            )
        except HubBusy:
            await self._hub_busy(name, remote_addr)
        step = hs.totp_step(info["totp_secret"], otp, self.clock())
        if step is None or not await self.storage.users.record_totp_step(name, step):
            await self._login_failed(name, remote_addr, "one-time code not accepted")
            raise AuthError(
                "one-time code not accepted: check the authenticator app's clock and retry"
            )
        if not await self.storage.invites.consume(hs.hash_token(invite), name, self.clock()):
            await self._login_failed(name, remote_addr, "invite not valid")
            raise AuthError(
                "invite not valid: it is wrong, used or expired; ask an admin for a new one"
            )
        await self.guard.succeeded(name)
        await self._check_user_lock(name)
        user = await self.storage.users.get(name)
        assert user is not None
        await self.storage.users.put(
            replace(user, password_hash=password_hash, totp_last_step=step)
        )
        log.info("invite accepted", extra={"user": name, "remote_addr": remote_addr})
        await self._record(
            EventType.USER_LOGIN, user=name, success=True, method="invite", remote_addr=remote_addr
        )
        user = await self.storage.users.get(name)
        assert user is not None
        return await self.issue_user_certs(user, public_key, ttl)

    async def _user_before_credentials(self, name: str) -> User | None:
        """The user, for a caller who has not proven anything yet. A TOTP seed that does
        not decrypt (a row altered while the hub runs) is the admin's to fix: logged
        here, and the caller is answered as for an unknown name, so the error's text
        (which names the user) does not tell an attacker that the name exists."""
        try:
            return await self.storage.users.get(name)
        except ConfigError as err:
            log.error("user record unreadable: %s", err, extra={"user": name})
            return None

    async def roles_of(self, user: User) -> list[Role]:
        """The user's roles as stored now (a removed role grants and limits nothing)."""
        roles = []
        for role_name in user.roles:
            role = await self.storage.roles.get(role_name)
            if role is not None:
                roles.append(role)
        return roles

    async def rules_for(self, user: User) -> tuple[list[AccessRule], int]:
        """Resolved access rules and the TTL cap (the smallest max_session_ttl)."""
        return rules_of(user, await self.roles_of(user))

    async def login(
        self,
        name: str,
        password: str,
        otp: str,
        public_key: str,
        ttl: int | None,
        remote_addr: str = "",
    ) -> Issued:
        try:
            await self.guard.check(name, remote_addr)  # before any Argon2 work
        except LoginRefused as err:
            await self._login_failed(name, remote_addr, err.reason, count=False, limited=True)
            raise
        user = await self._user_before_credentials(name)
        try:  # an unknown name's dummy hash takes a slot like a real one
            password_ok = await self.hash_gate.run(
                lambda: hs.verify_password_async(user.password_hash if user else None, password),
                priority=self.guard.trusted(remote_addr),
            )
        except HubBusy:
            await self._hub_busy(name, remote_addr)
        if user is None or not password_ok or user.totp_secret is None:
            reason = "unknown user" if user is None else "wrong password"
            await self._login_failed(name, remote_addr, reason)
            raise AuthError(LOGIN_FAILED)
        step = hs.totp_step(user.totp_secret, otp, self.clock())
        if step is None or not await self.storage.users.record_totp_step(name, step):
            reason = "one-time code wrong" if step is None else "one-time code already used"
            await self._login_failed(name, remote_addr, reason)
            raise AuthError(LOGIN_FAILED)
        await self.guard.succeeded(name, remote_addr)
        # Locks are checked only once the credentials are right: they tell nothing to
        # someone who does not have them.
        await self._check_user_lock(name, remote_addr)
        log.info("user login", extra={"user": name, "remote_addr": remote_addr})
        await self._record(
            EventType.USER_LOGIN,
            user=name,
            success=True,
            method="password+totp",
            remote_addr=remote_addr,
        )
        return await self.issue_user_certs(user, public_key, ttl)

    async def _login_failed(
        self,
        name: str,
        remote_addr: str,
        reason: str,
        *,
        count: bool = True,
        limited: bool = False,
    ) -> None:
        """Log and audit a refused login (never the password or code), and count it.
        A refusal by the limits (``limited``) is logged and audited within a hub-wide
        budget; the ones left out are counted in the next one's ``suppressed``."""
        extra = self.login_refusals.fields(self.clock()) if limited else {}
        if extra is None:
            return  # past the budget: counted, not audited
        locked = await self.guard.failed(name, remote_addr) if count else False
        log.warning(
            "login failed: %s",
            reason,
            extra={"user": name[:64], "remote_addr": remote_addr, "locked_out": locked, **extra},
        )
        await self._record(
            EventType.USER_LOGIN,
            user=name[:64],
            success=False,
            reason=reason,
            remote_addr=remote_addr,
            locked_out=locked,
            **extra,
        )

    async def _hub_busy(self, name: str, remote_addr: str) -> NoReturn:
        """Refuse an attempt that found no password-hash slot (not counted as a failure)."""
        self.guard.abandoned(name)
        await self._login_failed(name, remote_addr, BUSY_REASON, count=False, limited=True)
        raise LoginRefused(BUSY_MESSAGE, BUSY_REASON)

    async def check_user_lock(self, name: str, remote_addr: str = "") -> None:
        """Refuse (AccessDenied, audited) a user under a lock: SSO logins (hub/sso/flow.py)."""
        await self._check_user_lock(name, remote_addr)

    async def record(self, type: EventType, **kw: Any) -> None:
        """Audit an auth event (durable before the caller answers): SSO logins too."""
        await self._record(type, **kw)

    async def _check_user_lock(self, name: str, remote_addr: str = "") -> None:
        lock = find_lock(await self.storage.locks.all(self.clock()), user=name, now=self.clock())
        if lock is not None:
            await self._login_failed(name, remote_addr, f"locked ({lock.id})", count=False)
            raise AccessDenied(lock.refusal())

    async def issue_user_certs(self, user: User, public_key: str, ttl: int | None) -> Issued:
        try:
            pub = public_key_from_openssh(public_key)
        except CAError as exc:
            raise UsageError(f"bad public key: {exc}") from None
        roles = await self.roles_of(user)
        rules, cap = rules_of(user, roles)
        ttl = min(ttl or DEFAULT_MAX_TTL, cap)
        logins = allowed_logins(rules)
        now = int(self.clock())
        extensions = dict(DEFAULT_USER_EXTENSIONS)
        if not may_port_forward(rules):  # what OpenSSH's sshd enforces, as Teleport does
            extensions.pop("permit-port-forwarding", None)
        extensions[RULES_EXTENSION] = encode_rules(rules)
        extensions[ROLES_EXTENSION] = ",".join(user.roles)
        if disconnect_expired_cert(roles, ttl):
            extensions[DISCONNECT_EXTENSION] = ""  # the device ends sessions at expiry
        ssh_cert = self.user_ca.sign_ssh_user_cert(
            pub,
            key_id=user.name,
            principals=logins or [f"-remoteler-no-login-{user.name}"],
            ttl_seconds=ttl,
            now=now,
            extensions=extensions,
        )
        tls_cert = self.user_ca.issue_x509(
            pub,
            common_name=user.name,
            organization="remoteler-user",
            usage="client",
            ttl_seconds=ttl,
        )
        await self._record(EventType.CERT_CREATE, user=user.name, ttl=ttl, logins=list(logins))
        return Issued(ssh_cert, tls_cert.decode(), now + ttl, tuple(logins))

    # join --------------------------------------------------------------
    async def add_token(self, kind: str, ttl: int, labels: Mapping[str, str]) -> tuple[str, Token]:
        if kind != "node":
            raise UsageError(f"bad token type {kind!r}: only 'node' is supported")
        token = hs.new_token()
        now = self.clock()
        record = Token(hs.hash_token(token), kind, dict(labels), now, now + ttl, None)
        await self.storage.tokens.add(record)
        log.info("join token created", extra={"token_id": record.token_id, "ttl": ttl})
        return token, record

    async def join(
        self,
        token: str,
        name: str,
        labels: Mapping[str, str],
        public_key: str,
        version: str,
        remote_addr: str = "",
    ) -> dict[str, Any]:
        check_name("node", name)
        token_hash = hs.hash_token(token)
        try:
            hub_reserved = self.join_guard.check(remote_addr, self.clock())
        except JoinRefused as err:
            await self._join_failed(name, remote_addr, token_hash, err.reason, limited=True)
            raise
        record = await self.storage.tokens.get(token_hash)
        now = self.clock()
        bad = None
        if record is None:
            bad = "join token not recognised"
        elif record.used_by is not None:
            bad = "join token was already used"
        elif record.expires <= now:
            bad = "join token expired"
        if bad and not hub_reserved:  # too many failures hub-wide: only valid tokens pass
            refused = self.join_guard.refusal(now)
            await self._join_failed(name, remote_addr, token_hash, refused.reason, limited=True)
            raise refused
        if bad or record is None:
            await self._join_failed(name, remote_addr, token_hash, bad or "")
            raise AuthError(
                f"{bad}; ask the hub operator for a new one (tctl tokens add --type node)"
            )
        self.join_guard.succeeded(remote_addr, now, hub_reserved)  # a valid token: no guess
        try:
            pub = public_key_from_openssh(public_key)
        except CAError as exc:
            raise UsageError(f"bad public key: {exc}") from None
        existing = await self.storage.nodes.get(name)
        if existing is not None:
            raise UsageError(
                f"a node named {name!r} already exists; pick another --name "
                f"or remove the old one with 'tctl nodes rm {name}'"
            )
        node_id = str(uuid.uuid4())
        if not await self.storage.tokens.consume(token_hash, node_id, now):
            await self._join_failed(name, remote_addr, token_hash, "join token was already used")
            raise AuthError("join token was already used; ask the hub operator for a new one")
        merged = {**dict(labels), **dict(record.labels)}  # the operator's token labels win
        try:
            await self.storage.nodes.add(
                Node(
                    id=node_id,
                    name=name,
                    labels=merged,
                    version=version,
                    joined=now,
                    token_labels=dict(record.labels),
                )
            )
        except Conflict:  # another join took the name meanwhile
            raise UsageError(
                f"a node named {name!r} already exists; pick another --name "
                "and ask for a new token (this one was used)"
            ) from None
        principals = host_principals(node_id, name, self.cluster)
        ssh_cert = self.host_ca.sign_ssh_host_cert(pub, key_id=node_id, principals=principals)
        tls_cert = self.host_ca.issue_x509(
            pub,
            common_name=node_id,
            organization="remoteler-node",
            usage="client",
            ttl_seconds=NODE_X509_TTL,
        )
        await self._record(
            EventType.JOIN, node=node_id, name=name, token_id=record.token_id, version=version
        )
        log.info(
            "node joined",
            extra={"node_id": node_id, "node_name": name, "token_id": record.token_id},
        )
        return {
            "node_id": node_id,
            "name": name,
            "labels": merged,
            # The device must decide with these winning too (deny rules on token labels).
            "token_labels": dict(record.labels),
            "ssh_cert": ssh_cert,
            "tls_cert": tls_cert.decode(),
            "host_ca_pem": self.host_ca.x509_pem.decode(),
            "user_ca_ssh": self.user_ca.ssh_public_line(),
            "cluster": self.cluster,
        }

    async def _join_failed(
        self, name: str, remote_addr: str, token_hash: str, reason: str, *, limited: bool = False
    ) -> None:
        """Log and audit a refused join: the token only as its public id (a digest prefix).
        A refusal by the limits (``limited``) is logged and audited within a hub-wide
        budget; the ones left out are counted in the next one's ``suppressed``."""
        extra = self.join_refusals.fields(self.clock()) if limited else {}
        if extra is None:
            return  # past the budget: counted, not audited
        token_id = token_hash[:12]
        log.warning(
            "join refused: %s",
            reason,
            extra={"node_name": name, "remote_addr": remote_addr, "token_id": token_id, **extra},
        )
        await self._record(
            EventType.JOIN_FAILED,
            name=name,
            remote_addr=remote_addr,
            reason=reason,
            token_id=token_id,
            **extra,
        )
