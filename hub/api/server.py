"""The hub's one TLS port: ``/v1/rpc``, ``/v1/tunnel`` (agents), ``/v1/connect`` (users).

By default the proxy never decrypts a session: after the access check it asks
the node's agent for an ``ssh`` channel and only copies bytes between the user's
websocket and that channel. For a node set to ``--recording proxy`` the hub
terminates SSH itself and records the session instead (:mod:`hub.recording.proxy`).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import random
import time
import uuid
from collections.abc import Awaitable, Callable
from contextvars import ContextVar
from http import HTTPStatus
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

from websockets.asyncio.server import Server, ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from hub.api.counters import HubCounters
from hub.api.drain_notice import (
    SESSION_CUT,
    Notices,
    restart_refusal,
    seconds_left,
    session_notice,
)
from hub.api.linkprobe import check_link, not_answering
from hub.api.sessioncap import SessionCounter, TooManySessions, relay_deadline
from hub.api.tunnels import LiveNode, TunnelRegistry
from hub.audit.ingest import serve_audit_channel
from hub.audit.quota import AuditQuotas, QuotaConfig
from hub.audit.session_prefix import MIN_SESSION_PREFIX, resolve_session_prefix
from hub.auth.locks import LOCKED_CLOSE_CODE, LockWatcher
from hub.auth.service import AuthService, Issued, check_name, rules_of
from hub.cluster.peers import PeerLinks
from hub.cluster.route import NodeRoute
from hub.net.identity import Identity, peer_identity, peer_key_id
from hub.net.listener import Listener, ListenerLimits
from hub.net.wsutil import DEVICE_REASONS, close_reason, device_refusal, peer_addr, peer_host
from hub.storage.api import AuditLog, Node, Storage
from remoteler import rpc
from remoteler.access import Role as UserRole
from remoteler.access import check_access, node_visible
from remoteler.addr import parse_labels
from remoteler.caps import RESUME
from remoteler.errors import (
    AccessDenied,
    AuthError,
    HubRestarting,
    NodeError,
    RemotelerError,
    TunnelHeld,
    UsageError,
)
from remoteler.hubconn import ERROR_HEADER
from remoteler.locks import find_lock
from remoteler.notice import NOTICE_PARAM
from remoteler.protocol import (
    AUDIT_KIND,
    CONNECT_SUBPROTOCOL,
    RPC_SUBPROTOCOL,
    SSH_KIND,
    TUNNEL_SUBPROTOCOL,
    VERSION,
)
from remoteler.resume.handshake import RESUME_PARAM, SESSION_ID
from remoteler.roleopts import expiry_message, session_limit
from remoteler.wire.aio import Channel, ChannelRequest, Tunnel
from remoteler.wire.codes import ErrorCode, OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.exceptions import ChannelOpenError, TunnelClosed
from remoteler.wire.limits import Limits

if TYPE_CHECKING:
    from hub.recording.proxy import ProxyDeps
    from hub.rotation.runtime import HubRotation
    from hub.rotation.store import CASet
    from hub.sso.flow import SSOService
    from remoteler.ca import CertAuthority

log = logging.getLogger("remoteler.hub.proxy")

MAX_CONNECT_MESSAGE = 1 << 20
#: Largest message relayed to a user: well under tsh's 2 MiB websocket limit.
RELAY_CHUNK = 256 * 1024
#: Longest heartbeat interval an agent may ask the hub to tolerate, seconds.
MAX_HEARTBEAT = 3600.0
#: An RPC connection is closed after this many idle seconds, or this many requests.
RPC_IDLE_TIMEOUT = 30.0
RPC_MAX_REQUESTS = 100
#: A relayed session whose roles end it at certificate expiry is cut by the hub
#: this long after: the device ends it first, with its message (hub/api/sessioncap.py).
EXPIRY_GRACE = 5.0
#: Close code of a relay cut at certificate expiry.
EXPIRED_CLOSE_CODE = 4401
#: A relay cut (lock, expiry) waits this long for the user's side of the close.
CUT_CLOSE_TIMEOUT = 5.0
#: Routes (this hub's tunnel, peer hubs) a session's open is tried on before it fails.
MAX_ROUTES = 3

Handler = Callable[[Identity | None, dict[str, Any]], Awaitable[Any]]
#: The source address of the RPC connection being served (login protection).
_RPC_PEER: ContextVar[str] = ContextVar("rpc_peer", default="")


def _stale(tunnel: Tunnel) -> bool:
    """True if nothing came over ``tunnel`` for two heartbeat intervals: it may be a
    dead link its agent replaced, which a new tunnel should take over from."""
    interval = tunnel.limits.heartbeat_interval
    return interval > 0 and tunnel.silence > 2 * interval


def _refuse(connection: ServerConnection, status: HTTPStatus, err: RemotelerError) -> Response:
    response = connection.respond(status, err.message + "\n")
    response.headers[ERROR_HEADER] = err.code
    return response


class HubServer:
    def __init__(
        self,
        auth: AuthService,
        storage: Storage,
        limits: Limits | None = None,
        audit: AuditLog | None = None,
        listener_limits: ListenerLimits | None = None,
        audit_quota: QuotaConfig | None = None,
        hub_id: str = "hub",
    ) -> None:
        self.auth = auth
        #: each node's audit events per minute (hub/audit/quota.py)
        self.audit_quotas = AuditQuotas(audit_quota or QuotaConfig())
        self.listener_limits = listener_limits
        self.listener: Listener | None = None
        self.storage = storage
        self.audit = audit
        self.limits = limits or Limits()
        self.hub_id = hub_id
        #: share the listening port with sibling workers (hub/workers.py)
        self.reuse_port = False
        self.registry = TunnelRegistry(storage, hub_id)
        #: links to the cluster's other hubs (hub/cluster/peers.py); set by hub/app.py
        self.peers: PeerLinks | None = None
        #: single sign-on (hub/sso/flow.py); set by hub/app.py with the web console
        self.sso: SSOService | None = None
        #: CA rotation follower (hub/rotation/runtime.py); set by hub/app.py
        self.rotation: HubRotation | None = None
        self.locks = LockWatcher(storage, self.registry)
        #: open /v1/connect sessions per user (role option max_sessions)
        self.sessions = SessionCounter()
        #: relay bytes and audit events, for /metrics
        self.counters = HubCounters()
        self._lock_task: asyncio.Future[None] | None = None
        self.server: Server | None = None
        #: monotonic end of the drain's grace once SIGTERM started it (hub/api/drain_notice.py)
        self.drain_deadline: float | None = None
        #: open relays whose clients take notice lines
        self.notices = Notices()
        self.methods: dict[str, Handler] = {
            "ping": self.rpc_ping,
            "login": self.rpc_login,
            "invite.info": self.rpc_invite_info,
            "sso.start": self.rpc_sso_start,
            "invite.accept": self.rpc_invite_accept,
            "join": self.rpc_join,
            "nodes.list": self.rpc_nodes_list,
            "audit.session": self.rpc_audit_session,
        }
        from hub.admin.methods import admin_methods  # tctl's admin.* methods (docs/tctl.md)

        self.methods.update(admin_methods(self, _RPC_PEER.get))

    # lifecycle -----------------------------------------------------------
    async def start(self, host: str, port: int, ssl_ctx: Any) -> tuple[str, int]:
        self.listener = Listener(
            self.handle,
            ssl_ctx,
            process_request=self.process_request,
            subprotocols=[TUNNEL_SUBPROTOCOL, CONNECT_SUBPROTOCOL, RPC_SUBPROTOCOL],
            max_size=max(self.limits.max_frame_bytes, MAX_CONNECT_MESSAGE) + 1024,
            limits=self.listener_limits,
        )
        self.listener.reuse_port = self.reuse_port
        # Compression stays off (SSH bytes are encrypted: deflate only burns CPU and
        # memory) and websocket pings too: the tunnel has its own heartbeats.
        self.server = await self.listener.start(host, port, backlog=4096)
        await self.locks.refresh()
        self._lock_task = asyncio.ensure_future(self.locks.run())
        sock = next(iter(self.server.sockets))
        addr = sock.getsockname()
        return addr[0], addr[1]

    async def drain(self, grace: float, spread: float, rng: random.Random | None = None) -> None:
        """Graceful stop: refuse new sessions and tunnels, tell open sessions how long
        they have, send every agent away with a spread-out retry-after, and give
        tunnels carrying user sessions up to ``grace`` seconds.

        Agents come back to the next hub over ``spread`` seconds instead of all at
        once; a session still open after ``grace`` ends with a clear message. Next:
        :meth:`close`, which stops listening.
        """
        rng = rng or random.Random()
        # Still accepting: a new session hears "hub is restarting, try again in N s"
        # (process_request) rather than a refused connection; agents are closed before
        # TLS, as by a closed port.
        if self.listener is not None:
            self.listener.refuse_tunnels = True
        deadline = self.drain_deadline = time.monotonic() + grace
        live = self.registry.live()
        log.info(
            "draining",
            extra={
                "tunnels": len(live),
                "sessions": sum(n.sessions for n in live),
                "grace_s": grace,
                "spread_s": spread,
                "notices": len(self.notices),
            },
        )
        await self.notices.announce(session_notice(seconds_left(deadline, time.monotonic())))
        last_call = asyncio.ensure_future(self.notices.announce_at(deadline, SESSION_CUT))

        async def send_away(node: LiveNode) -> None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(node.idle.wait(), max(0.0, deadline - time.monotonic()))
            if not node.idle.is_set():  # its sessions hear why they end, then it closes
                await asyncio.shield(last_call)
            with contextlib.suppress(Exception):
                await node.tunnel.close(
                    ErrorCode.GOING_AWAY,
                    "hub restarting; reconnect after the delay given",
                    retry_after=rng.uniform(1.0, max(1.0, spread)),
                )

        async def wait_outgoing() -> None:
            """Sessions of this hub's users relayed through peers get the grace too."""
            if self.peers is None:
                return
            idle = self.peers.outgoing.idle
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(idle.wait(), max(0.0, deadline - time.monotonic()))
            if not idle.is_set():
                await asyncio.shield(last_call)

        try:
            await asyncio.gather(wait_outgoing(), *(send_away(node) for node in live))
        finally:
            last_call.cancel()
            await asyncio.gather(last_call, return_exceptions=True)

    async def close(self) -> None:
        if self._lock_task is not None:
            self._lock_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._lock_task
            await self.locks.close()
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()

    # handshake: route and authorise before the upgrade -------------------
    async def process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        url = urlsplit(request.path)
        ident = peer_identity(connection.transport, self.auth.user_ca, self.auth.host_ca)
        connection.remoteler_identity = ident  # type: ignore[attr-defined]
        try:
            if url.path == "/v1/rpc":
                return None
            if url.path in ("/v1/tunnel", "/v1/connect") and (
                restarting := self._restarting(connection)
            ):
                return restarting
            if url.path == "/v1/tunnel":
                if ident is None or ident.kind != "node":
                    raise AuthError("the tunnel endpoint needs a node certificate from the host CA")
                node = await self.storage.nodes.get(ident.name)
                if node is None or node.id != ident.name:
                    raise AuthError(
                        "this node was removed from the hub; join again with a new token"
                    )
                held = self.registry.get(node.id)
                if held is not None and held.sessions > 0 and not _stale(held.tunnel):
                    # a second tunnel of an agent that keeps several (docs/cluster.md)
                    # landed here: the one carrying sessions stays, this one goes
                    raise TunnelHeld(
                        "this node already has a tunnel to this hub that carries sessions; "
                        "dial another hub of the cluster"
                    )
                connection.remoteler_node = node  # type: ignore[attr-defined]
                return None
            if url.path == "/v1/connect":
                query = parse_qs(url.query)
                node_key = (query.get("node") or [""])[0]
                login = (query.get("login") or [""])[0]
                resume = (query.get(RESUME_PARAM) or [""])[0]
                if resume and resume != "new" and not SESSION_ID.match(resume):
                    raise UsageError("resume must be 'new' or a session id; update tsh")
                node, roles, route = await self.authorize_connect(ident, node_key, login)
                connection.remoteler_resume = resume  # type: ignore[attr-defined]
                if restarting := self._restarting(connection):  # began during the probe
                    return restarting
                assert ident is not None
                self._take_session_slot(connection, ident.name, roles)
                connection.remoteler_target = (node, login, route)  # type: ignore[attr-defined]
                return None
        except AuthError as err:
            return _refuse(connection, HTTPStatus.UNAUTHORIZED, err)
        except TooManySessions as err:
            return _refuse(connection, HTTPStatus.TOO_MANY_REQUESTS, err)
        except TunnelHeld as err:
            return _refuse(connection, HTTPStatus.CONFLICT, err)
        except AccessDenied as err:
            return _refuse(connection, HTTPStatus.FORBIDDEN, err)
        except NodeError as err:  # the drain closing its tunnel, if it began meanwhile
            return self._restarting(connection) or _refuse(connection, HTTPStatus.NOT_FOUND, err)
        except UsageError as err:
            return _refuse(connection, HTTPStatus.BAD_REQUEST, err)
        return _refuse(
            connection, HTTPStatus.NOT_FOUND, UsageError(f"no such endpoint {url.path!r}")
        )

    def _restarting(self, connection: ServerConnection) -> Response | None:
        """HTTP 503 "hub is restarting, try again in N s" once the drain has begun."""
        if self.drain_deadline is None:
            return None
        left = seconds_left(self.drain_deadline, time.monotonic())
        response = _refuse(
            connection, HTTPStatus.SERVICE_UNAVAILABLE, HubRestarting(restart_refusal(left))
        )
        response.headers["Retry-After"] = str(left)
        return response

    def _take_session_slot(
        self, connection: ServerConnection, name: str, roles: list[UserRole]
    ) -> None:
        """Count this connection against the user's ``max_sessions`` until its TCP
        connection is gone (raise TooManySessions when the user is at the limit)."""
        try:
            release = self.sessions.acquire(name, session_limit(roles))
        except TooManySessions:
            log.warning("connect refused: session limit", extra={"user": name})
            raise
        # Not when the handler returns: the connection lives on until the client
        # answers the close or websockets gives up on it, and a client that does not
        # read could otherwise hold any number of them.
        connection.connection_lost_waiter.add_done_callback(lambda _: release())
        deadline = relay_deadline(connection.transport, roles)
        connection.remoteler_deadline = deadline  # type: ignore[attr-defined]

    async def authorize_connect(
        self, ident: Identity | None, node_key: str, login: str
    ) -> tuple[Node, list[UserRole], NodeRoute]:
        """The node to connect to, the user's roles (which set the session's limits), and
        the route to it: its tunnel here, or a peer hub that holds it (docs/cluster.md)."""
        if ident is None or ident.kind != "user":
            raise AuthError("connecting to a node needs a user certificate: run 'tsh login'")
        user = await self.storage.users.get(ident.name)
        if user is None:
            raise AuthError(f"user {ident.name!r} no longer exists; ask an admin")
        if not node_key or not login:
            raise UsageError("give a node and a login, as in 'tsh ssh login@node'")
        node = await self.storage.nodes.get(node_key)
        roles = await self.auth.roles_of(user)
        rules, _ = rules_of(user, roles)
        if node is None or not node_visible(rules, self.registry.labels_of(node)):
            # One answer for both: a node the user may not list must not show its
            # labels (or its existence) through the refusal.
            raise NodeError(f"node {node_key[:64]!r} not found or access denied; see 'tsh ls'")
        # Read the table, not the watcher's copy: a lock made a moment ago applies.
        lock = find_lock(
            await self.storage.locks.all(time.time()),
            user=user.name,
            login=login,
            nodes=(node.id, node.name),
            now=time.time(),
        )
        if lock is not None:
            log.warning(
                "connect denied: locked",
                extra={"user": user.name, "login": login, "node_id": node.id, "lock_id": lock.id},
            )
            raise AccessDenied(lock.refusal())
        live = self.registry.get(node.id)
        labels = self.registry.labels_of(node)
        reason = check_access(rules, login, labels, node=node.name, user=user.name)
        if reason:
            log.warning(
                "connect denied",
                extra={"user": user.name, "login": login, "node_id": node.id},
            )
            raise AccessDenied(reason)
        if live is None:
            route = await self.peer_route(node.id)
            if route is not None:
                return node, roles, route
            seen = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(node.last_seen or 0))
            raise NodeError(
                f"node {node.name!r} is offline (last seen {seen}); try again when it reconnects"
            )
        silent = await check_link(live.tunnel)  # a frozen link: say so in 2 s, not 15
        if silent is not None:
            route = await self.peer_route(node.id)  # its other tunnel may still work
            if route is not None:
                return node, roles, route
            log.warning(
                "connect refused: link silent",
                extra={"user": user.name, "node_id": node.id, "silent_s": round(silent.silence)},
            )
            raise NodeError(not_answering(node.name, silent))
        return node, roles, live

    async def peer_route(
        self, node_id: str, exclude: frozenset[str] = frozenset()
    ) -> NodeRoute | None:
        """A route through another hub of the cluster that holds the node's tunnel."""
        if self.peers is None:
            return None
        holders = await self.storage.presence.holders(node_id, time.time())
        return await self.peers.route_to(node_id, [p.hub_id for p in holders], exclude)

    async def open_ssh(
        self, route: NodeRoute, node_id: str, meta: dict[str, Any]
    ) -> tuple[NodeRoute, Channel]:
        """Open the ``ssh`` channel on ``route``; if that hub or tunnel failed on the way
        (not the device refusing), through another hub holding the node, at most
        :data:`MAX_ROUTES` in all. Raises what the last attempt raised."""
        tried: set[str] = set()
        while True:
            try:
                return route, await route.open_channel(SSH_KIND, meta, timeout=15)
            except (ChannelOpenError, TunnelClosed, TimeoutError) as exc:
                refused = (
                    isinstance(exc, ChannelOpenError) and exc.code != OpenFailure.CONNECT_FAILED
                )
                if refused:
                    raise
                fresh = self.registry.get(node_id)
                if not route.via and fresh is not None and fresh is not route:
                    route = fresh  # the agent reconnected here meanwhile: its new tunnel
                    continue
                tried.add(route.via or self.hub_id)
                if len(tried) >= MAX_ROUTES:
                    raise
                other: NodeRoute | None = await self.peer_route(node_id, frozenset(tried))
                if other is None:
                    raise
                log.info(
                    "session rerouted",
                    extra={"node_id": node_id, "failed": sorted(tried), "via": other.via},
                )
                route = other

    # connections -----------------------------------------------------------
    async def handle(self, ws: ServerConnection) -> None:
        path = urlsplit(ws.request.path if ws.request else "").path
        ident: Identity | None = getattr(ws, "remoteler_identity", None)
        try:
            if path == "/v1/tunnel" and ident is not None:
                query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
                node: Node = ws.remoteler_node  # type: ignore[attr-defined]
                await self.serve_tunnel(
                    ws,
                    node,
                    self.tunnel_limits(query),
                    (query.get("locks") or [""])[0],
                    clock=query.get("clock") == ["1"],
                )
            elif path == "/v1/connect":
                node, login, route = ws.remoteler_target  # type: ignore[attr-defined]
                assert ident is not None
                # the session's slot is given back when the TCP connection is gone
                query = parse_qs(urlsplit(ws.request.path if ws.request else "").query)
                # A resumable session needs no drain notice: when this hub cuts it, tsh
                # resumes it through another hub (or this one, back) by itself.
                resumable = bool(getattr(ws, "remoteler_resume", "")) and RESUME in node.caps
                if (query.get(NOTICE_PARAM) or [""])[0] == "1" and not resumable:
                    self.notices.add(ws)
                try:
                    if ws in self.notices and self.drain_deadline is not None:
                        # the drain began after our last check: its announcement missed us
                        left = seconds_left(self.drain_deadline, time.monotonic())
                        await self.notices.tell(ws, session_notice(left))
                    await self.serve_connect(ws, ident.name, node, login, route)
                finally:
                    self.notices.discard(ws)
            elif path == "/v1/rpc":
                await self.serve_rpc(ws, ident)
        except ConnectionClosed:
            pass

    def tunnel_limits(self, query: dict[str, list[str]]) -> Limits:
        """The agent's heartbeat settings, within bounds: the hub expects what it sends."""
        try:
            interval = float((query.get("heartbeat") or [""])[0])
            misses = int((query.get("misses") or [""])[0])
        except ValueError:
            return self.limits
        if not (interval == interval and 0.1 <= interval <= MAX_HEARTBEAT and 1 <= misses <= 10):
            return self.limits
        return dataclasses.replace(
            self.limits, heartbeat_interval=interval, allowed_misses=misses, send_heartbeats=False
        )

    async def serve_tunnel(
        self,
        ws: ServerConnection,
        node: Node,
        limits: Limits,
        locks_digest: str = "",
        clock: bool = False,
    ) -> None:
        node_id = node.id
        core = Connection(Role.LISTENER, limits, now=time.monotonic())
        if clock:  # the agent asked for the hub's time in PONGs (docs/wire-protocol.md)
            core.pong_clock = time.time
        tunnel = Tunnel(
            ws,
            core,
            on_channel=lambda request: self._agent_channel(request, node_id),
            on_heartbeat=lambda payload: self.registry.heartbeat(node_id, payload),
        )
        self.registry.register(node, tunnel)
        self.locks.agent_has(tunnel, locks_digest)
        log.info("tunnel up", extra={"node_id": node_id, "peer": peer_addr(ws)})
        try:
            await tunnel.run()
        finally:
            self.registry.unregister(node_id, tunnel)
            log.info(
                "tunnel down",
                extra={"node_id": node_id, "code": getattr(tunnel.close_code, "name", None)},
            )

    async def _agent_channel(self, request: ChannelRequest, node_id: str) -> None:
        """Channels an agent may open: only ``audit``, stored under the tunnel's node id."""
        if request.kind == AUDIT_KIND and self.audit is not None:
            wait = self.audit_quotas.blocked(node_id, time.monotonic())
            if wait is not None:  # it ignored the quota's retry-after: not before it is over
                request.reject(OpenFailure.RESOURCE_SHORTAGE, f"audit quota: retry in {wait:.0f}s")
                return
            await serve_audit_channel(
                request.accept(),
                node_id,
                self.audit,
                self.audit_quotas,
                counted=self.counters.ingested,
            )
            return
        request.reject(OpenFailure.UNKNOWN_KIND, f"unknown channel kind {request.kind[:32]!r}")

    def recording_deps(self) -> ProxyDeps:
        """What the recording proxy needs of this hub (hub/recording/proxy.py), read at
        each use: the CAs of the rotation's current phase, or the auth service's."""
        from hub.recording.proxy import ProxyDeps

        def phase() -> CASet | None:
            return self.rotation.cas if self.rotation is not None else None

        def user_cas() -> list[CertAuthority]:
            return list(c.user.trusted) if (c := phase()) else [self.auth.user_ca]

        def user_signer() -> CertAuthority:
            return c.user.signer if (c := phase()) else self.auth.user_ca

        def host_cas() -> list[CertAuthority]:
            return list(c.host.trusted) if (c := phase()) else [self.auth.host_ca]

        def host_server_ca() -> CertAuthority:
            return c.host.server if (c := phase()) else self.auth.host_ca

        return ProxyDeps(
            user_cas=user_cas,
            user_signer=user_signer,
            host_cas=host_cas,
            host_server_ca=host_server_ca,
            labels_of=self.registry.labels_of,
            cluster=self.auth.cluster,
            track_relay=self.locks.track_relay,
            audit=self.audit,
        )

    async def serve_connect(
        self, ws: ServerConnection, user: str, node: Node, login: str, route: NodeRoute
    ) -> None:
        session_id = str(uuid.uuid4())
        fields = {"user": user, "login": login, "node_id": node.id, "session_id": session_id}
        if route.via:
            fields["via"] = route.via
        if node.recording == "proxy":  # the hub terminates SSH and records (hub/recording/proxy.py)
            from hub.recording.proxy import RecordingProxy

            await RecordingProxy(self.recording_deps()).serve(
                ws, user, node, login, session_id, route
            )
            return
        meta = {
            "user": user,
            "login": login,
            "session_id": session_id,
            "remote_addr": peer_host(ws),
        }
        resume = getattr(ws, "remoteler_resume", "")
        if resume:  # a resumable stream under SSH: relayed as any bytes (docs/resume.md)
            meta["resume"] = resume
            meta["user_key"] = peer_key_id(ws.transport)
            fields["resume"] = "new" if resume == "new" else resume[:8]
        try:
            route, channel = await self.open_ssh(route, node.id, meta)
            if route.via:
                fields["via"] = route.via
        except (ChannelOpenError, TunnelClosed, TimeoutError) as exc:
            log.warning("connect failed: %s", type(exc).__name__, extra=fields)
            if isinstance(exc, TunnelClosed) and not route.via:
                await ws.close(
                    4503, f"node {node.name!r} went offline; try again when it reconnects"
                )
                return
            why = f"node {node.name!r} did not accept the session; try again"
            if isinstance(exc, ChannelOpenError) and exc.code in DEVICE_REASONS and exc.reason:
                why = device_refusal(node.name, exc.reason)  # forward mode: its sshd is down
            await ws.close(4502, close_reason(why))
            return
        log.info("session relay start", extra=fields)
        route.session_started()

        async def cut(code: int, reason: str) -> None:
            """End the relay now: the device's channel first (a client that does not
            read never gets our close frame, and what it sends must not reach the
            device), then the websocket, waiting at most CUT_CLOSE_TIMEOUT."""
            channel.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CUT_CLOSE_TIMEOUT):
                    await ws.close(code, close_reason(reason))

        async def end_locked(reason: str) -> None:
            await cut(LOCKED_CLOSE_CODE, reason)

        untrack = self.locks.track_relay(
            user, login, (node.id, node.name), end_locked, recording=node.recording
        )
        sent = received = 0

        counters = self.counters

        async def user_to_node() -> None:
            nonlocal sent
            async for message in ws:
                if isinstance(message, str):
                    await ws.close(1003, "binary messages only")
                    return
                sent += len(message)
                counters.relay_to_node += len(message)
                channel.write(message)
                await channel.drain()
            channel.write_eof()

        async def node_to_user() -> None:
            nonlocal received
            while data := await channel.read(RELAY_CHUNK):
                received += len(data)
                counters.relay_to_user += len(data)
                await ws.send(data)
            if not channel.eof_received and route.lost():
                # closed without the device's end of stream: its tunnel, or the peer
                # hub holding it, went away mid-session
                held = f" (hub {route.via}, which held its tunnel, went away)" if route.via else ""
                why = f"the link to node {node.name!r} was lost{held}; connect again"
                await ws.close(4502, close_reason(why))
                return
            await ws.close()

        async def end_at_expiry(deadline: float) -> None:
            await asyncio.sleep(max(0.0, deadline - time.time()) + EXPIRY_GRACE)
            log.info("session relay cut: certificate expired", extra=fields)
            await cut(EXPIRED_CLOSE_CODE, expiry_message(deadline))

        tasks = [asyncio.ensure_future(user_to_node()), asyncio.ensure_future(node_to_user())]
        deadline: float | None = getattr(ws, "remoteler_deadline", None)
        if deadline is not None:
            tasks.append(asyncio.ensure_future(end_at_expiry(deadline)))
        try:
            _, pending = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            # Let the other direction finish its last bytes briefly, then stop.
            if pending:
                await asyncio.wait(pending, timeout=5)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            channel.close()
            untrack()
            route.session_ended()
            log.info("session relay end", extra={**fields, "bytes_in": sent, "bytes_out": received})

    async def serve_rpc(self, ws: ServerConnection, ident: Identity | None) -> None:
        _RPC_PEER.set(peer_host(ws))
        for _ in range(RPC_MAX_REQUESTS):
            try:
                async with asyncio.timeout(RPC_IDLE_TIMEOUT):
                    message = await ws.recv()
            except TimeoutError:
                await ws.close(1000, "idle")
                return
            try:
                req_id, method, params = rpc.parse_request(message)
            except rpc.RpcFormatError:
                await ws.close(1002, "malformed RPC message")
                return
            handler = self.methods.get(method)
            try:
                if handler is None:
                    raise UsageError(f"unknown method {method[:40]!r}; upgrade tsh or the agent")
                result = await handler(ident, params)
                await ws.send(rpc.result_message(req_id, result))
            except RemotelerError as err:
                await ws.send(rpc.error_message(req_id, err))
            except (KeyError, TypeError, ValueError):
                await ws.send(rpc.error_message(req_id, UsageError(f"bad parameters for {method}")))
            except Exception:
                log.exception("rpc failed", extra={"method": method})
                await ws.send(
                    rpc.error_message(
                        req_id, RemotelerError("internal error on the hub; see its log")
                    )
                )
        await ws.close(1000, "request limit reached; open a new connection")

    # rpc methods -------------------------------------------------------------
    async def rpc_ping(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        return {
            "cluster": self.auth.cluster,
            "version": VERSION,
            "host_ca_pem": self.auth.host_ca.x509_pem.decode(),
            "user_ca_pem": self.auth.user_ca.x509_pem.decode(),
            "host_ca_ssh": self.auth.host_ca.ssh_public_line(),
            "user_ca_ssh": self.auth.user_ca.ssh_public_line(),
            # agents with a wrong clock learn the skew from it (edge_agent/clockdial.py)
            "time": time.time(),
            # tsh login with no --auth uses it (docs/sso.md)
            "auth_connector": await self.sso.default() if self.sso is not None else None,
            **(self.rotation.ping_info() if self.rotation is not None else {}),
        }

    async def rpc_login(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        ttl = params.get("ttl")
        issued = await self.auth.login(
            _str(params, "user"),
            _str(params, "password"),
            _str(params, "otp"),
            _str(params, "public_key"),
            int(ttl) if isinstance(ttl, int) and ttl > 0 else None,
            remote_addr=_RPC_PEER.get(),
        )
        return _issued(issued)

    async def rpc_sso_start(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        """``tsh login --auth NAME``: a pending SSO login (hub/sso/flow.py); the URL to
        open in a browser."""
        if self.sso is None:
            raise UsageError(
                "single sign-on needs the hub's web console: start it without --no-web"
            )
        ttl = params.get("ttl")
        request_id, url = await self.sso.start(
            _str(params, "connector"),
            mode="tsh",
            remote_addr=_RPC_PEER.get(),
            public_key=_str(params, "public_key"),
            client_key=_str(params, "client_key"),
            redirect_url=_str(params, "redirect_url"),
            ttl=int(ttl) if isinstance(ttl, int) and ttl > 0 else None,
        )
        from hub.sso.flow import PENDING_TTL

        return {"request_id": request_id, "url": url, "expires_in": PENDING_TTL}

    async def rpc_invite_info(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        return await self.auth.invite_info(
            _str(params, "user"), _str(params, "invite"), remote_addr=_RPC_PEER.get()
        )

    async def rpc_invite_accept(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        ttl = params.get("ttl")
        issued = await self.auth.accept_invite(
            _str(params, "user"),
            _str(params, "invite"),
            _str(params, "password"),
            _str(params, "otp"),
            _str(params, "public_key"),
            int(ttl) if isinstance(ttl, int) and ttl > 0 else None,
            remote_addr=_RPC_PEER.get(),
        )
        return _issued(issued)

    async def rpc_join(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        labels = params.get("labels") or {}
        if not isinstance(labels, dict):
            raise UsageError("labels must be a map")
        result = await self.auth.join(
            _str(params, "token"),
            check_name("node", _str(params, "name")),
            parse_labels(",".join(f"{k}={v}" for k, v in labels.items())),
            _str(params, "public_key"),
            str(params.get("version", ""))[:64],
            remote_addr=_RPC_PEER.get(),
        )
        if self.rotation is not None:  # every trusted CA, certificates from the phase's CAs
            result = await self.rotation.decorate_join(result, _str(params, "public_key"))
        return result

    def _refuse_if_locked(self, user: str) -> None:
        """A locked user's certificate still works until it expires: refuse it here too
        (the lock watcher's copy, at most one poll old)."""
        lock = find_lock(self.locks.locks, user=user, now=time.time())
        if lock is not None:
            raise AccessDenied(lock.refusal())

    async def rpc_nodes_list(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        if ident is None or ident.kind != "user":
            raise AuthError("listing nodes needs a user certificate: run 'tsh login'")
        user = await self.storage.users.get(ident.name)
        if user is None:
            raise AuthError(f"user {ident.name!r} no longer exists; ask an admin")
        self._refuse_if_locked(user.name)
        rules, _ = await self.auth.rules_for(user)
        want = params.get("labels") or {}
        if not isinstance(want, dict):
            raise UsageError("labels must be a map")
        return self.node_rows(rules, want, await self.storage.nodes.all())

    def node_rows(
        self, rules: list[Any], want: dict[str, Any], nodes: list[Node]
    ) -> list[dict[str, Any]]:
        """``nodes.list``'s rows of ``nodes`` the rules let the user see, matching
        ``want``'s labels, with their live state (the web console passes a snapshot)."""
        out = []
        # A fleet has few distinct label sets: decide each once per call, not per node.
        visible: dict[frozenset[tuple[str, str]], bool] = {}
        for node in nodes:
            live = self.registry.get(node.id)
            labels = self.registry.labels_of(node)
            key = frozenset(labels.items())
            shown = visible.get(key)
            if shown is None:
                shown = visible[key] = node_visible(rules, labels)
            if not shown:
                continue  # as Teleport: users only see nodes their roles match (and no deny)
            if any(labels.get(k) != v for k, v in want.items()):
                continue
            out.append(
                {
                    "id": node.id,
                    "name": node.name,
                    "labels": labels,
                    # held here, or by another hub of the cluster (presence)
                    "online": live is not None or any(h != self.hub_id for h in node.held_by),
                    "serial_ports": live.serial_ports if live else [],  # while online
                    "last_seen": live.last_seen if live else node.last_seen,
                    "version": (live.version if live else "") or node.version,
                    "recording": node.recording,
                    "ssh": live.ssh_mode if live else "",  # known while online only
                    # device minus hub, seconds; None under a minute (docs/tunnels.md)
                    "clock_skew": live.status.clock_skew if live else node.clock_skew,
                    # what its agent supports (remoteler/caps.py): stored, so every hub
                    # of a cluster knows it; [] for an agent older than capabilities
                    "caps": list(live.caps if live else node.caps),
                    # events waiting in the device's outbox (its last heartbeat, as stored)
                    "audit_pending": (
                        live.status.audit.pending
                        if live and live.status.audit is not None
                        else node.audit_pending
                    ),
                    # the host certificate's expiry, as its agent reports it (while online)
                    "cert_expires": live.status.cert_expires if live else None,
                }
            )
        return out

    async def rpc_audit_session(self, ident: Identity | None, params: dict[str, Any]) -> Any:
        """A session's events (``tsh play``), for the user who ran it only."""
        if ident is None or ident.kind != "user":
            raise AuthError("reading a session needs a user certificate: run 'tsh login'")
        if await self.storage.users.get(ident.name) is None:
            raise AuthError(f"user {ident.name!r} no longer exists; ask an admin")
        self._refuse_if_locked(ident.name)
        session_id = _str(params, "session_id")
        if not session_id:  # '' is every event outside a session: a full scan, not one
            raise UsageError("give a session id: 'tctl audit search' shows them")
        events = await self.audit.session(session_id) if self.audit else []
        if not events and self.audit is not None:  # the short id 'tctl audit search' shows
            session_id = await resolve_session_prefix(self.audit, session_id, ident.name)
            events = await self.audit.session(session_id)
        # Every event must name the caller: an event forged into someone else's
        # session opens it to nobody, and an unknown id looks like someone else's.
        if not events or any(e.user != ident.name for e in events):
            hint = (
                f" (a short id needs at least {MIN_SESSION_PREFIX} characters)"
                if len(session_id) < MIN_SESSION_PREFIX
                else "; 'tctl audit search --type session.start' lists the ids"
            )
            raise AccessDenied(
                f"no session {session_id[:64]!r} of yours is recorded on this hub{hint}"
            )
        return [e.to_wire() for e in events]


def _issued(issued: Issued) -> dict[str, Any]:
    return {
        "ssh_cert": issued.ssh_cert,
        "tls_cert": issued.tls_cert,
        "expires": issued.expires,
        "logins": list(issued.logins),
    }


def _str(params: dict[str, Any], key: str) -> str:
    value = params.get(key)
    if not isinstance(value, str):
        raise UsageError(f"missing parameter {key!r}")
    return value
