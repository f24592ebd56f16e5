"""The embedded SSH server, reached only through tunnel channels (no listening port)."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from edge_agent.authz import PERMISSIONS_INFO, decide_user_cert
from edge_agent.forward import ForwardGate
from edge_agent.identity import NodeIdentity
from edge_agent.locks import LockStore
from edge_agent.rotate import user_ca_for
from edge_agent.serial_console import ConsoleSession
from edge_agent.session import CommandSession
from remoteler.access import AccessDecision
from remoteler.audit.events import EventType
from remoteler.ca import CAError, parse_certificate, private_key_to_openssh
from remoteler.roleopts import (
    SESSIONS_PER_CONNECTION,
    SESSIONS_PER_CONNECTION_REFUSAL,
    ends_at_expiry,
    expiry_message,
)
from remoteler.sshio import (
    BytePipe,
)
from remoteler.sshserver import (
    ASYNCSSH_REFUSED,
    SERVER_OPTIONS,
    CertificateOnlyServer,
    CheckedTunnel,
)
from remoteler.usercert import CERT_TIME_REFUSED

if TYPE_CHECKING:
    from edge_agent.audit import AgentAudit
    from edge_agent.clock import HubClock
    from edge_agent.serial_line import SerialConsoles

log = logging.getLogger("remoteler.agent.sshd")

#: Key of the connection's extra info: when its certificate's sessions must end.
EXPIRY_INFO = "remoteler_ends_at"


class NodeSSHServer(CertificateOnlyServer):
    def __init__(
        self,
        user_ca_line: str,
        fields: dict[str, Any],
        audit: AgentAudit | None = None,
        locks: LockStore | None = None,
        consoles: SerialConsoles | None = None,
        now: Callable[[], float] = time.time,
    ) -> None:
        self._consoles = consoles
        #: hub-corrected time (edge_agent/clock.py): certificate expiry is the hub's
        self._now = now
        # One line per trusted user CA: two while a CA rotation is under way.
        self.user_cas = [asyncssh.import_public_key(x) for x in user_ca_line.splitlines() if x]
        self._fields = fields
        self._audit = audit
        self._locks = locks
        self._untrack: Callable[[], None] | None = None
        self._open: list[CommandSession] = []
        self._conn: Any = None
        self._forwards: ForwardGate | None = None
        self._sessions = 0
        self._expiry: asyncio.TimerHandle | None = None
        #: why the connection is being ended (its certificate expired under
        #: disconnect_expired_cert, or a lock covers it): no new channels
        self._expired: str | None = None
        self.login = ""

    def connection_made(self, conn: Any) -> None:
        self._conn = conn
        self._forwards = ForwardGate(conn, self._audit, self._fields.get("session_id") or "")

    def auth_completed(self) -> None:
        if self._locks is not None and self._conn is not None:
            user = self._conn.get_extra_info("remoteler_user", "")
            self._untrack = self._locks.track(user, self.login, self._end_locked)
        expires = self._conn.get_extra_info(EXPIRY_INFO) if self._conn is not None else None
        if isinstance(expires, int):  # the certificate's roles end its sessions at expiry
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, expires - self._now()), self._end_expired, expires
            )

    def connection_lost(self, exc: Exception | None) -> None:
        if self._untrack is not None:
            self._untrack()
        if self._expiry is not None:
            self._expiry.cancel()

    def _end_expired(self, expires: int) -> None:
        """End every session with the expiry message (exit 255), then the connection."""
        self._expired = message = expiry_message(expires)
        log.info("ssh sessions ended: certificate expired", extra=self._fields)
        for session in self._open:
            session.end_expired(message)
        if self._conn is not None:
            asyncio.get_running_loop().call_later(2.0 if self._open else 0.0, self._conn.close)

    def _end_locked(self, message: str) -> None:
        """End every session with ``message``, then the connection (no new channels)."""
        self._expired = message
        for session in self._open:
            session.end_locked(message)
        if self._conn is not None:
            asyncio.get_running_loop().call_later(2.0 if self._open else 0.0, self._conn.close)

    def begin_auth(self, username: str) -> bool:
        self.login = username
        return True

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """``direct-tcpip`` (ssh -L): decided and served by edge_agent.forward."""
        if self._expired is not None:  # the connection is closing: no new channel
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, self._expired
            )
        if self._forwards is None:
            return False
        return self._forwards.open(self.login, dest_host, dest_port)

    def session_requested(self) -> CommandSession | bool:
        if self._expired is not None:  # the connection is closing: say why, as -L does
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED, self._expired
            )
        if CommandSession.missing_login(self.login):
            # Refuse the channel with the reason: tsh prints it and exits 255, as ssh.
            node = self._fields.get("node_name") or "this device"
            log.warning("session refused: no such login", extra={"login": self.login})
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                f"login {self.login!r} does not exist on {node}",
            )
        self._open = [s for s in self._open if s.is_open()]
        if len(self._open) >= SESSIONS_PER_CONNECTION:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, SESSIONS_PER_CONNECTION_REFUSAL
            )
        self._sessions += 1
        base = self._fields.get("session_id") or ""
        session_id = base if self._sessions == 1 else f"{base}-{self._sessions}"
        user = self._conn.get_extra_info("remoteler_user", "") if self._conn else ""
        session = ConsoleSession(
            self.login,
            audit=self._audit,
            user=user,
            session_id=session_id,
            consoles=self._consoles,
            via=self._fields.get("via", ""),
        )
        self._open.append(session)
        return session


def _ends_at(cert_blob: bytes) -> int | None:
    """When this certificate's sessions must end (disconnect_expired_cert), or None."""
    try:
        cert = parse_certificate(cert_blob)
    except CAError:
        return None
    return cert.valid_before if ends_at_expiry(cert.extensions) else None


def _key_id(cert_blob: bytes) -> str:
    try:
        return parse_certificate(cert_blob).key_id[:64]
    except CAError:
        return ""


async def serve_ssh(
    pipe: BytePipe,
    meta: Mapping[str, Any],
    ident: NodeIdentity,
    labels: Callable[[], Mapping[str, str]],
    audit: AgentAudit | None = None,
    locks: LockStore | None = None,
    consoles: SerialConsoles | None = None,
    *,
    clock: HubClock | None = None,
) -> None:
    """Serve one SSH connection over ``pipe`` (a tunnel channel or a local TCP stream).

    Certificates are checked the same way whichever way the connection came, and
    against hub-corrected time when ``clock`` knows the device's skew (a refusal
    the skew may cause names it, to the log, the audit trail and the user).
    """
    now = clock.now if clock is not None else time.time
    fields = {
        "session_id": str(meta.get("session_id") or uuid.uuid4())[:64],
        "user": str(meta.get("user", ""))[:64],
        "node_name": ident.name,
    }
    if meta.get("via") == "local":  # the device's own listener: recorded offline
        fields["via"] = "local"
    user_cas = ident.user_ca_ssh  # a CA rotation replaces it; this connection keeps these

    def check(cert_blob: bytes, login: str) -> AccessDecision:
        user_ca = user_ca_for(cert_blob, user_cas)
        decision = decide_user_cert(cert_blob, login, user_ca, labels(), ident.name, now())
        if decision.reason is None and locks is not None:
            lock = locks.find(_key_id(cert_blob), login)
            if lock is not None:
                return AccessDecision(f"{lock.refusal()} (lock {lock.id})")
        return decision

    def refused(conn: Any, cert_blob: bytes, login: str, reason: str) -> None:
        user = _key_id(cert_blob)
        # a skew corrected for is not the cause; one beyond the bound may be
        hint = clock.hint() if clock is not None and not clock.corrected else ""
        if hint and reason in (ASYNCSSH_REFUSED, CERT_TIME_REFUSED):
            reason += hint  # the clock may be why: say so (tsh shows the banner)
            conn.send_auth_banner(f"{reason}\r\n")
        log.warning("ssh auth failed: %s", reason, extra={"login": login})
        if audit is not None:
            audit.emit_nowait(
                EventType.AUTH_FAILED,
                user=user,
                login=login,
                session_id=fields["session_id"],
                reason=reason,
            )

    peer = str(meta.get("remote_addr") or "127.0.0.1")

    def accepted(conn: Any, cert_blob: bytes, decision: AccessDecision) -> None:
        conn.set_extra_info(
            remoteler_user=_key_id(cert_blob),
            **{PERMISSIONS_INFO: decision.permissions, EXPIRY_INFO: _ends_at(cert_blob)},
        )

    tunnel = CheckedTunnel(
        pipe,
        {"peername": (peer, 0), "sockname": ("127.0.0.1", 0)},
        check,
        refused,
        accepted,
        now=now,
    )
    host_key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    host_cert = asyncssh.import_certificate(ident.ssh_cert)
    try:
        conn = await asyncssh.connect_reverse(
            tunnel=tunnel,
            config=None,
            server_factory=lambda: NodeSSHServer(user_cas, fields, audit, locks, consoles, now),
            server_host_keys=[(host_key, host_cert)],
            **SERVER_OPTIONS,
        )
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        log.info("ssh connection ended before login: %s", type(exc).__name__, extra=fields)
        pipe.close()
        return
    log.info("ssh session start", extra={**fields, "login": conn.get_extra_info("username")})
    await conn.wait_closed()
    pipe.close()
    log.info("ssh session end", extra=fields)
