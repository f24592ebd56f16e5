"""The recording proxy: for a node in ``proxy`` mode the hub terminates the user's SSH.

Teleport's "recording proxy" for legacy devices, per node (``tctl nodes set NAME
--recording proxy``). Over the user's ``/v1/connect`` websocket the hub runs an
SSH server that

- presents a host certificate for the node's names, signed by the host CA, so
  ``tsh ssh`` and OpenSSH with ``tsh config``'s known_hosts accept it unchanged;
- accepts the user's certificate from the user CA(s) and checks the login as the
  device would (:mod:`hub.recording.auth`);
- once the user is in, opens an ``ssh`` channel to the node's agent and logs in
  there with a fresh key and a short-lived certificate for the same user and login
  (same extensions: the device still enforces the roles), checking the device's
  host certificate against the host CA;
- bridges each session channel (pty, env, shell/exec/subsystem, window changes,
  signals, breaks, EOF, exit status or signal) and records what the user sees
  (:mod:`hub.recording.audit`).

The hub sees the session in plaintext in this mode (docs/security.md). Port
forwards (``ssh -L``) go through the hub's connection to the device, audited
but not recorded (:mod:`hub.recording.forward`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import asyncssh

from hub.auth.service import host_principals
from hub.net.wsutil import DEVICE_REASONS, close_reason, device_refusal, peer_host
from hub.recording.audit import END_TIMEOUT
from hub.recording.auth import check_user_cert, upstream_cert
from hub.recording.forward import open_forward
from hub.recording.session import UpstreamError, UserSession
from remoteler.access import NO_PERMISSIONS, AccessDecision, Permissions
from remoteler.audit.events import HUB_NODE, EventType, make_event
from remoteler.ca import CertAuthority, generate_private_key, private_key_to_openssh
from remoteler.ca.sshcert import ParsedCert
from remoteler.protocol import SSH_KIND
from remoteler.roleopts import (
    SESSIONS_PER_CONNECTION,
    SESSIONS_PER_CONNECTION_REFUSAL,
    ends_at_expiry,
    expiry_message,
)
from remoteler.sshalgs import client_options
from remoteler.sshio import (
    SSH_MAX_PACKET,
    SSH_WINDOW,
    ChannelPipe,
    PipeTunnel,
    WebSocketPipe,
)
from remoteler.sshserver import SERVER_OPTIONS, CertificateOnlyServer, CheckedTunnel
from remoteler.wire.exceptions import ChannelOpenError, TunnelClosed

if TYPE_CHECKING:
    from hub.cluster.route import NodeRoute
    from hub.storage.api import AuditLog, Node

log = logging.getLogger("remoteler.hub.recording")

#: Lifetime of the host certificate the hub presents for a node (checked at the
#: key exchange only; a fresh one is signed for every connection).
HOST_CERT_TTL = 3600


def _banner_refusal(conn: Any, cert: bytes, login: str, reason: str) -> None:
    """OpenSSH shows an auth banner to the user (tsh does not, its refusal is generic)."""
    with contextlib.suppress(Exception):
        conn.send_auth_banner(f"remoteler hub: {reason}\r\n")


@dataclass(frozen=True)
class ProxyDeps:
    """What the recording proxy needs of the hub, and no more (the hub's server builds
    it: ``HubServer.recording_deps``). The CAs are asked for at each use: a rotation
    changes them while the hub runs."""

    #: user CAs whose certificates are accepted (two of a kind during a rotation)
    user_cas: Callable[[], list[CertAuthority]]
    #: signs the short-lived certificate the hub logs in to the device with
    user_signer: Callable[[], CertAuthority]
    #: host CAs whose certificates a device may present
    host_cas: Callable[[], list[CertAuthority]]
    #: signs the host certificate the hub presents to the user for the node
    host_server_ca: Callable[[], CertAuthority]
    #: the node's labels as its agent last reported them
    labels_of: Callable[[Node], Mapping[str, str]]
    #: the cluster name, in the host certificate's principals
    cluster: str
    #: ``LockWatcher.track_relay``: end the connection when a lock covers it
    track_relay: Callable[..., Callable[[], None]]
    #: where sessions and refusals are recorded (None: sessions are refused)
    audit: AuditLog | None


class RecordingProxy:
    """Serves ``/v1/connect`` for nodes in ``proxy`` mode (see :meth:`serve`)."""

    def __init__(self, deps: ProxyDeps) -> None:
        self.deps = deps

    # the CAs in use (two of a kind during a rotation) ---------------------------
    def user_cas(self) -> list[CertAuthority]:
        return self.deps.user_cas()

    def user_signer(self) -> CertAuthority:
        return self.deps.user_signer()

    def host_cas(self) -> list[CertAuthority]:
        return self.deps.host_cas()

    def host_server_ca(self) -> CertAuthority:
        return self.deps.host_server_ca()

    async def serve(
        self, ws: Any, user: str, node: Node, login: str, session_id: str, live: NodeRoute
    ) -> None:
        """Run the SSH server over ``ws`` until the user or the device hangs up."""
        fields = {"user": user, "login": login, "node_id": node.id, "session_id": session_id}
        peer = peer_host(ws)
        pipe = WebSocketPipe(ws)
        labels = self.deps.labels_of(node)
        trusted = [ca.public_key for ca in self.user_cas()]
        refusals: list[str] = []
        state = ConnState(self, user, node, login, session_id, live, peer)
        state.role_deadline = getattr(ws, "remoteler_deadline", None)

        def check(blob: bytes, username: str) -> AccessDecision:
            if username != login:
                decision = AccessDecision(
                    f"this connection is for login {login!r}, not {username[:32]!r}"
                )
            else:
                checked = check_user_cert(
                    blob,
                    login,
                    user=user,
                    trusted=trusted,
                    labels=labels,
                    node_name=node.name,
                    now=time.time(),
                )
                decision = checked.decision
                limited = checked.cert is not None and (
                    "source-address" in checked.cert.critical_options
                )
                if decision.reason is None and not peer and limited:
                    # asyncssh would check it against the stand-in address below
                    decision = AccessDecision(
                        "your certificate is restricted to source addresses and the hub "
                        "cannot tell yours; connect directly, not through a proxy"
                    )
                if decision.reason is None and checked.cert is not None:
                    state.user_cert = checked.cert
                    state.permissions = decision.permissions  # enforced here: see ConnState
            if decision.reason is not None:
                log.warning("proxy auth refused: %s", decision.reason, extra=fields)
                refusals.append(decision.reason)
            return decision

        host_key = generate_private_key()
        host_cert = self.host_server_ca().sign_ssh_host_cert(
            host_key.public_key(),
            key_id=f"{node.id}@hub-recording-proxy",
            principals=host_principals(node.id, node.name, self.deps.cluster),
            ttl_seconds=HOST_CERT_TTL,
        )
        tunnel = CheckedTunnel(
            pipe,
            {"peername": (peer or "127.0.0.1", 0), "sockname": ("127.0.0.1", 0)},
            check,
            _banner_refusal,
        )
        live.session_started()
        untrack = self.deps.track_relay(
            user,
            login,
            (node.id, node.name),
            lambda reason: state.end_locked(ws, reason),
            recording=node.recording,
        )
        try:
            try:
                conn = await asyncssh.connect_reverse(
                    tunnel=tunnel,
                    config=None,
                    server_factory=lambda: _ProxyServer(state),
                    server_host_keys=[
                        (
                            asyncssh.import_private_key(private_key_to_openssh(host_key)),
                            asyncssh.import_certificate(host_cert),
                        )
                    ],
                    **SERVER_OPTIONS,
                )
            except (asyncssh.Error, OSError, TimeoutError) as exc:
                log.info(
                    "proxy connection ended before login: %s", type(exc).__name__, extra=fields
                )
                if refusals:
                    await self._audit_refusal(user, login, session_id, node, refusals[-1])
                return
            log.info("recording proxy start", extra=fields)
            await conn.wait_closed()
            log.info("recording proxy end", extra=fields)
        finally:
            await state.close()
            # the sessions' ends are being stored: the node is idle (drain) only after
            endings = [s.ending for s in state.open_sessions if s.ending is not None]
            if endings:
                await asyncio.wait(endings, timeout=END_TIMEOUT)
            untrack()
            live.session_ended()
            pipe.close()

    async def _audit_refusal(
        self, user: str, login: str, session_id: str, node: Node, reason: str
    ) -> None:
        if self.deps.audit is None:
            return
        with contextlib.suppress(Exception):
            await self.deps.audit.record(
                make_event(
                    EventType.AUTH_FAILED,
                    node=HUB_NODE,
                    user=user,
                    login=login,
                    session_id=session_id,
                    reason=reason,
                    recorded_by="hub",
                    node_id=node.id,
                    node_name=node.name,
                )
            )


class ConnState:
    """One user connection: the user's certificate, the device connection, the sessions."""

    def __init__(
        self,
        proxy: RecordingProxy,
        user: str,
        node: Node,
        login: str,
        session_id: str,
        live: NodeRoute,
        peer: str,
    ) -> None:
        self.proxy = proxy
        self.user = user
        self.node = node
        self.login = login
        self.session_id = session_id
        self.live = live
        self.peer = peer
        self.user_cert: ParsedCert | None = None
        #: what the signed rules let this login do on this node; the hub enforces
        #: file_transfer and port_forwarding itself (a legacy sshd cannot read the rules)
        self.permissions: Permissions = NO_PERMISSIONS
        #: the agent records too (embedded server), under an id of its own
        self.device_session = str(uuid.uuid4())
        self.sessions = 0
        self.open_sessions: list[UserSession] = []
        #: the user's SSH connection, once it is up
        self.user_conn: asyncssh.SSHServerConnection | None = None
        self._upstream: asyncio.Future[asyncssh.SSHClientConnection] | None = None
        self._watcher: asyncio.Future[None] | None = None
        self._expiry: asyncio.TimerHandle | None = None
        #: when the user's current roles end this connection (hub/api/sessioncap.py
        #: ``relay_deadline``: the x509 certificate's expiry), or None
        self.role_deadline: float | None = None

    @property
    def audit(self) -> AuditLog | None:
        return self.proxy.deps.audit

    def end_at_expiry(self) -> None:
        """End the sessions when the user's certificate expires, if its flag or the
        user's current roles say so (a role set to true after the certificate was
        issued without the flag): whichever comes first."""
        cert = self.user_cert
        ends = [self.role_deadline] if self.role_deadline is not None else []
        if cert is not None and ends_at_expiry(cert.extensions):
            ends.append(float(cert.valid_before))
        if ends and self._expiry is None:
            at = min(ends)
            self._expiry = asyncio.get_running_loop().call_later(
                max(0.0, at - time.time()), self.end_expired, at
            )

    def end_expired(self, expires: float) -> None:
        """Tell each session its certificate expired (exit 255), then hang up."""
        message = expiry_message(expires)
        log.info(
            "proxied sessions ended: certificate expired",
            extra={"user": self.user, "session_id": self.session_id},
        )
        for session in self.open_sessions:
            session.end_expired(message)
        if self.user_conn is not None:
            self.user_conn.close()

    def start_upstream(self) -> None:
        if self._upstream is None:
            self._upstream = asyncio.ensure_future(self._connect())

    async def upstream(self) -> asyncssh.SSHClientConnection:
        self.start_upstream()
        assert self._upstream is not None
        return await asyncio.shield(self._upstream)

    async def _connect(self) -> asyncssh.SSHClientConnection:
        node = self.node
        fields = {"user": self.user, "node_id": node.id, "session_id": self.session_id}
        if self.user_cert is None:
            raise UpstreamError("no checked certificate")
        try:
            channel = await self.live.open_channel(
                SSH_KIND,
                {
                    "user": self.user,
                    "login": self.login,
                    "session_id": self.device_session,
                    "remote_addr": self.peer,
                    "recorded_by": "hub",
                },
                timeout=15,
            )
        except (ChannelOpenError, TunnelClosed, TimeoutError) as exc:
            log.warning("proxy upstream channel failed: %s", type(exc).__name__, extra=fields)
            why = f"node {node.name!r} did not accept the session; try again"
            if isinstance(exc, ChannelOpenError) and exc.code in DEVICE_REASONS and exc.reason:
                why = device_refusal(node.name, exc.reason)  # forward mode: its sshd is down
            raise UpstreamError(why) from None
        key = generate_private_key()
        pipe = ChannelPipe(channel)
        try:  # the user's certificate may have expired while the device was reached
            cert = upstream_cert(
                self.proxy.user_signer(), self.user_cert, self.login, key, int(time.time())
            )
        except UpstreamError:
            pipe.close()
            raise
        known = "\n".join(ca.known_hosts_line("*") for ca in self.proxy.host_cas())
        try:
            conn = await asyncssh.connect(
                node.name,
                tunnel=PipeTunnel(pipe, {"peername": ("127.0.0.1", 0)}),
                config=None,
                username=self.login,
                client_keys=[
                    (
                        asyncssh.import_private_key(private_key_to_openssh(key)),
                        asyncssh.import_certificate(cert),
                    )
                ],
                known_hosts=asyncssh.import_known_hosts(known),
                agent_path=None,
                preferred_auth="publickey",
                **client_options(),
                window=SSH_WINDOW,
                max_pktsize=SSH_MAX_PACKET,
                connect_timeout=30,
            )
        except asyncssh.PermissionDenied:
            pipe.close()
            log.warning("device refused the proxy login", extra=fields)
            raise UpstreamError(
                f"node {node.name!r} refused login {self.login!r} for you "
                "(its own rules or sshd configuration)"
            ) from None
        except asyncssh.HostKeyNotVerifiable:
            pipe.close()
            log.error("device host certificate not from the host CA", extra=fields)
            raise UpstreamError(
                f"node {node.name!r} did not present a host certificate from the cluster's "
                "host CA; tell the hub operator"
            ) from None
        except asyncssh.KeyExchangeFailed:
            pipe.close()
            log.error("device offers no SSH algorithm in common with the hub", extra=fields)
            raise UpstreamError(
                f"node {node.name!r} offers no modern SSH algorithm (curve25519, AES-GCM or "
                "chacha20, Ed25519); tell the hub operator (docs/security.md)"
            ) from None
        except (asyncssh.Error, OSError, TimeoutError) as exc:
            pipe.close()
            log.warning("proxy upstream failed: %s", type(exc).__name__, extra=fields)
            raise UpstreamError(f"connection to node {node.name!r} failed; try again") from None
        self._watcher = asyncio.ensure_future(self._hang_up_after(conn))
        return conn

    async def _hang_up_after(self, conn: asyncssh.SSHClientConnection) -> None:
        """The device's connection is gone (agent restart, tunnel loss): once the
        sessions have passed their end on, close the user's connection too."""
        await conn.wait_closed()
        endings = [s.ending for s in self.open_sessions if s.ending is not None]
        if endings:
            await asyncio.wait(endings, timeout=END_TIMEOUT)
        if self.user_conn is not None:
            self.user_conn.close()

    async def end_locked(self, ws: Any, reason: str) -> None:
        """A lock now covers this connection: tell each session why, then hang up."""
        for session in self.open_sessions:
            session.end_locked(reason)
        if self.user_conn is not None:
            self.user_conn.close()  # the pipe sends what is queued, then closes the websocket
            return
        from hub.auth.locks import LOCKED_CLOSE_CODE

        await ws.close(LOCKED_CLOSE_CODE, close_reason(reason))

    def forget(self, session: UserSession) -> None:
        """``session`` is over (its end stored): the connection no longer holds it."""
        with contextlib.suppress(ValueError):
            self.open_sessions.remove(session)

    async def close(self) -> None:
        """Close the device's connection. A cancellation of the caller (hub shutdown)
        propagates; the upstream's own failure or cancellation is not an error here."""
        if self._expiry is not None:
            self._expiry.cancel()
        upstream = self._upstream
        if upstream is None:
            return
        if not upstream.done():
            upstream.cancel()
        await asyncio.wait([upstream])
        if upstream.cancelled() or upstream.exception() is not None:
            return
        conn = upstream.result()
        conn.close()
        await conn.wait_closed()


class _ProxyServer(CertificateOnlyServer):
    def __init__(self, state: ConnState) -> None:
        self._state = state
        self.user_cas = [
            asyncssh.import_public_key(ca.ssh_public_line()) for ca in state.proxy.user_cas()
        ]
        self._conn: asyncssh.SSHServerConnection | None = None
        self._closer: asyncio.Future[None] | None = None

    def connection_made(self, conn: asyncssh.SSHServerConnection) -> None:
        self._conn = conn
        self._state.user_conn = conn

    def begin_auth(self, username: str) -> bool:
        return True

    def auth_completed(self) -> None:
        self._state.start_upstream()  # the device login starts while the client sets up
        self._state.end_at_expiry()

    def connection_requested(
        self, dest_host: str, dest_port: int, orig_host: str, orig_port: int
    ) -> Any:
        """``ssh -L``: a coroutine asyncssh awaits before it answers the channel open."""
        if not self._state.permissions.port_forwarding:
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_ADMINISTRATIVELY_PROHIBITED,
                "port forwarding is not permitted by your roles",
            )
        return open_forward(self._state, dest_host, dest_port)

    def session_requested(self) -> UserSession:
        state = self._state
        if len(state.open_sessions) >= SESSIONS_PER_CONNECTION:  # each one is recorded here
            raise asyncssh.ChannelOpenError(
                asyncssh.OPEN_RESOURCE_SHORTAGE, SESSIONS_PER_CONNECTION_REFUSAL
            )
        state.sessions += 1
        sid = state.session_id if state.sessions == 1 else f"{state.session_id}-{state.sessions}"
        session = UserSession(state, sid)
        state.open_sessions.append(session)
        return session

    def connection_lost(self, exc: Exception | None) -> None:
        self._closer = asyncio.ensure_future(self._state.close())
