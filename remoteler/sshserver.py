"""The authentication policy every Remoteler SSH server shares: user certificates
from the trusted user CA(s), nothing else (no passwords, keyboard-interactive or
plain keys). The device's embedded server and the hub's recording proxy use it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Any

import asyncssh
from asyncssh.public_key import CERT_TYPE_ANY

from remoteler.access import AccessDecision
from remoteler.sshalgs import common_options
from remoteler.sshio import SSH_MAX_PACKET, SSH_WINDOW, BytePipe, PipeTunnel

#: asyncssh server options of every Remoteler SSH server (the device's embedded
#: server, the hub's recording proxy): modern algorithms only (remoteler/sshalgs.py),
#: large windows and packets, bytes not text, no line editor, no agent or X11 forwarding.
SERVER_OPTIONS: Mapping[str, Any] = MappingProxyType(
    {
        **common_options(),
        "window": SSH_WINDOW,
        "max_pktsize": SSH_MAX_PACKET,
        "login_timeout": 30,
        "allow_pty": True,
        "encoding": None,
        "line_editor": False,
        "agent_forwarding": False,
        "x11_forwarding": False,
    }
)

#: Why a certificate asyncssh itself refused was refused.
ASYNCSSH_REFUSED = "certificate refused (CA, validity, principal or source address)"


class CertificateOnlyServer(asyncssh.SSHServer):
    """Subclasses set ``user_cas`` (two keys while a user-CA rotation is under way)."""

    user_cas: list[asyncssh.SSHKey]

    def password_auth_supported(self) -> bool:
        return False

    def kbdint_auth_supported(self) -> bool:
        return False

    def public_key_auth_supported(self) -> bool:
        return True

    def validate_public_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return False  # certificates only

    def validate_ca_key(self, username: str, key: asyncssh.SSHKey) -> bool:
        return any(key.public_data == ca.public_data for ca in self.user_cas)


class CheckedTunnel(PipeTunnel):
    """asyncssh over a byte pipe, with our rule check after asyncssh's own
    certificate validation (CA, validity, principal, source address).

    ``check(cert_blob, login)`` decides. On a refusal ``refused(conn, cert_blob,
    login, reason)`` runs (log, audit, banner) and the key is refused; on success
    ``accepted(conn, cert_blob, decision)`` may tag the connection. asyncssh has no
    public hook at this point, so this wraps its private
    ``_validate_openssh_certificate`` (asyncssh is pinned to a range for that).
    """

    def __init__(
        self,
        pipe: BytePipe,
        extra: dict[str, Any],
        check: Callable[[bytes, str], AccessDecision],
        refused: Callable[[Any, bytes, str, str], None],
        accepted: Callable[[Any, bytes, AccessDecision], None] | None = None,
        *,
        now: Callable[[], float] | None = None,
    ) -> None:
        super().__init__(pipe, extra)
        self._check = check
        #: the time certificates are judged at (a device's hub-corrected clock); None:
        #: asyncssh's own ``time.time()``
        self._now = now
        self._refused = refused
        self._accepted = accepted

    async def create_connection(
        self, session_factory: Callable[[], Any], host: str, port: int
    ) -> Any:
        def factory() -> Any:
            conn = session_factory()
            original = conn._validate_openssh_certificate

            async def validate(username: str, cert: Any) -> Any:
                if self._now is not None:
                    cert.validate = _validate_at(cert, self._now())
                key = await original(username, cert)
                decision = AccessDecision(ASYNCSSH_REFUSED)
                if key is not None:
                    decision = self._check(cert.public_data, username)
                if decision.reason is not None:
                    self._refused(conn, cert.public_data, username, decision.reason)
                    return None
                if self._accepted is not None:
                    self._accepted(conn, cert.public_data, decision)
                return key

            conn._validate_openssh_certificate = validate
            return conn

        return await super().create_connection(factory, host, port)


def _validate_at(cert: Any, now: float) -> Callable[[int, str | None], None]:
    """asyncssh's ``SSHOpenSSHCertificate.validate`` (type, window, principal; the
    asyncssh version pinned in pyproject.toml), judging the window at ``now``
    instead of ``time.time()``. Set on the one certificate being checked."""

    def validate(cert_type: int, principal: str | None) -> None:
        if cert_type not in (CERT_TYPE_ANY, cert._cert_type):
            raise ValueError("Invalid certificate type")
        if now < cert._valid_after:
            raise ValueError("Certificate not yet valid")
        if now >= cert._valid_before:
            raise ValueError("Certificate expired")
        if principal is not None and cert.principals and principal not in cert.principals:
            raise ValueError("Certificate principal mismatch")

    return validate
