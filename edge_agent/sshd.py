"""The embedded SSH server, reached only through tunnel channels (no listening port)."""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

import asyncssh

from edge_agent.authz import authorize_user_cert
from edge_agent.identity import NodeIdentity
from edge_agent.session import CommandSession
from remoteler.audit.events import EventType
from remoteler.ca import CAError, parse_certificate, private_key_to_openssh, public_key_from_openssh
from remoteler.sshio import (
    CIPHERS,
    SSH_MAX_PACKET,
    SSH_WINDOW,
    BytePipe,
    ChannelPipe,
    PipeTunnel,
)

if TYPE_CHECKING:
    from edge_agent.audit import AgentAudit

log = logging.getLogger("remoteler.agent.sshd")


class NodeSSHServer(asyncssh.SSHServer):
    def __init__(
        self, user_ca_line: str, fields: dict[str, Any], audit: AgentAudit | None = None
    ) -> None:
        self._user_ca = asyncssh.import_public_key(user_ca_line)
        self._fields = fields
        self._audit = audit
        self._conn: Any = None
        self._sessions = 0
        self.login = ""

    def connection_made(self, conn: Any) -> None:
        self._conn = conn

    def begin_auth(self, username: str) -> bool:
        self.login = username
        return True

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # certificates only

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return bool(key.public_data == self._user_ca.public_data)

    def session_requested(self) -> CommandSession:
        self._sessions += 1
        base = self._fields.get("session_id") or ""
        session_id = base if self._sessions == 1 else f"{base}-{self._sessions}"
        user = self._conn.get_extra_info("remoteler_user", "") if self._conn else ""
        return CommandSession(self.login, audit=self._audit, user=user, session_id=session_id)


class _CheckedTunnel(PipeTunnel):
    """Adds the device's own rule check to asyncssh's certificate validation."""

    def __init__(
        self,
        pipe: BytePipe,
        check: Callable[[bytes, str], str | None],
        extra: dict[str, Any],
        on_refused: Callable[[str, str, str], None],
    ) -> None:
        super().__init__(pipe, extra)
        self._check = check
        self._on_refused = on_refused

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> Any:
        def factory() -> Any:
            conn = session_factory()
            original = conn._validate_openssh_certificate

            async def validate(username: str, cert: Any) -> Any:
                key = await original(username, cert)
                key_id = _key_id(cert.public_data)
                reason: str | None = "certificate refused (CA, validity or principal)"
                if key is not None:
                    reason = self._check(cert.public_data, username)
                if reason is not None:
                    log.warning("ssh auth failed: %s", reason, extra={"login": username})
                    self._on_refused(key_id, username, reason)
                    return None
                conn.set_extra_info(remoteler_user=key_id)
                return key

            conn._validate_openssh_certificate = validate
            return conn

        return await super().create_connection(factory, host, port)


def _key_id(cert_blob: bytes) -> str:
    try:
        return parse_certificate(cert_blob).key_id[:64]
    except CAError:
        return ""


async def serve_ssh_channel(
    channel: Any,
    ident: NodeIdentity,
    labels: Callable[[], Mapping[str, str]],
    audit: AgentAudit | None = None,
) -> None:
    """Serve one SSH connection arriving as a tunnel channel."""
    meta = channel.meta if isinstance(channel.meta, dict) else {}
    try:
        await serve_ssh(ChannelPipe(channel), meta, ident, labels, audit)
    finally:
        channel.close()


async def serve_ssh(
    pipe: BytePipe,
    meta: Mapping[str, Any],
    ident: NodeIdentity,
    labels: Callable[[], Mapping[str, str]],
    audit: AgentAudit | None = None,
) -> None:
    """Serve one SSH connection over ``pipe`` (a tunnel channel or a local TCP stream).

    Certificates are checked the same way whichever way the connection came.
    """
    fields = {
        "session_id": str(meta.get("session_id") or uuid.uuid4())[:64],
        "user": str(meta.get("user", ""))[:64],
    }
    user_ca = public_key_from_openssh(ident.user_ca_ssh)

    def check(cert_blob: bytes, login: str) -> str | None:
        return authorize_user_cert(cert_blob, login, user_ca, labels(), ident.name, time.time())

    def refused(user: str, login: str, reason: str) -> None:
        if audit is not None:
            audit.emit_nowait(
                EventType.AUTH_FAILED,
                user=user,
                login=login,
                session_id=fields["session_id"],
                reason=reason,
            )

    peer = str(meta.get("remote_addr") or "127.0.0.1")
    tunnel = _CheckedTunnel(
        pipe, check, {"peername": (peer, 0), "sockname": ("127.0.0.1", 0)}, refused
    )
    host_key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    host_cert = asyncssh.import_certificate(ident.ssh_cert)
    try:
        conn = await asyncssh.connect_reverse(
            tunnel=tunnel,
            config=None,
            server_factory=lambda: NodeSSHServer(ident.user_ca_ssh, fields, audit),
            server_host_keys=[(host_key, host_cert)],
            encryption_algs=CIPHERS,
            window=SSH_WINDOW,
            max_pktsize=SSH_MAX_PACKET,
            login_timeout=30,
            allow_pty=True,
            encoding=None,
            line_editor=False,
            agent_forwarding=False,
            x11_forwarding=False,
        )
    except (asyncssh.Error, OSError, TimeoutError) as exc:
        log.info("ssh connection ended before login: %s", type(exc).__name__, extra=fields)
        pipe.close()
        return
    log.info("ssh session start", extra={**fields, "login": conn.get_extra_info("username")})
    await conn.wait_closed()
    pipe.close()
    log.info("ssh session end", extra=fields)
