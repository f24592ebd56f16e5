"""The embedded SSH server, reached only through tunnel channels (no listening port)."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

import asyncssh

from edge_agent.authz import authorize_user_cert
from edge_agent.identity import NodeIdentity
from edge_agent.session import CommandSession
from remoteler.ca import private_key_to_openssh, public_key_from_openssh
from remoteler.sshio import CIPHERS, SSH_MAX_PACKET, SSH_WINDOW, ChannelPipe, PipeTunnel

log = logging.getLogger("remoteler.agent.sshd")


class NodeSSHServer(asyncssh.SSHServer):
    def __init__(self, user_ca_line: str, fields: dict[str, Any]) -> None:
        self._user_ca = asyncssh.import_public_key(user_ca_line)
        self._fields = fields
        self.login = ""

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
        return CommandSession(self.login)


class _CheckedTunnel(PipeTunnel):
    """Adds the device's own rule check to asyncssh's certificate validation."""

    def __init__(
        self, channel: Any, check: Callable[[bytes, str], str | None], extra: dict[str, Any]
    ) -> None:
        super().__init__(ChannelPipe(channel), extra)
        self._check = check

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> Any:
        def factory() -> Any:
            conn = session_factory()
            original = conn._validate_openssh_certificate

            async def validate(username: str, cert: Any) -> Any:
                key = await original(username, cert)
                if key is None:
                    log.warning("ssh auth failed: certificate refused", extra={"login": username})
                    return None
                reason = self._check(cert.public_data, username)
                if reason is not None:
                    log.warning("ssh auth failed: %s", reason, extra={"login": username})
                    return None
                return key

            conn._validate_openssh_certificate = validate
            return conn

        return await super().create_connection(factory, host, port)


async def serve_ssh_channel(
    channel: Any, ident: NodeIdentity, labels: Callable[[], Mapping[str, str]]
) -> None:
    meta = channel.meta if isinstance(channel.meta, dict) else {}
    fields = {
        "session_id": str(meta.get("session_id", ""))[:64],
        "user": str(meta.get("user", ""))[:64],
    }
    user_ca = public_key_from_openssh(ident.user_ca_ssh)

    def check(cert_blob: bytes, login: str) -> str | None:
        return authorize_user_cert(cert_blob, login, user_ca, labels(), ident.name, time.time())

    peer = str(meta.get("remote_addr") or "127.0.0.1")
    tunnel = _CheckedTunnel(channel, check, {"peername": (peer, 0), "sockname": ("127.0.0.1", 0)})
    host_key = asyncssh.import_private_key(private_key_to_openssh(ident.key))
    host_cert = asyncssh.import_certificate(ident.ssh_cert)
    try:
        conn = await asyncssh.connect_reverse(
            tunnel=tunnel,
            config=None,
            server_factory=lambda: NodeSSHServer(ident.user_ca_ssh, fields),
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
        channel.close()
        return
    log.info("ssh session start", extra={**fields, "login": conn.get_extra_info("username")})
    await conn.wait_closed()
    channel.close()
    log.info("ssh session end", extra=fields)
