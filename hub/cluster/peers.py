"""Peer links: one long-lived, multiplexed tunnel between two hubs of a cluster.

A hub listens on ``--peer-listen`` (TLS 1.3, a hub certificate from the host CA
required: hub/cluster/identity.py) and keeps a link to every live peer whose id sorts
after its own, so each pair has one link, dialled by the smaller id; either end opens
channels on it. A hub that needs a peer it has no link to dials it at once (a peer
that just started), so two links per pair can exist for a while; both work.

The only channel on a link is ``relay``: "open this kind of channel on node N's
tunnel, which you hold". The holding hub opens it on the agent's tunnel and copies
bytes between the two channels (hub/cluster/splice.py), each with its own window,
so flow control holds end to end and the SSH session stays between tsh and the
device. The link runs the same sans-I/O tunnel core as agents' tunnels, with
heartbeats every :data:`HEARTBEAT` seconds: a silent peer (a black-holed network)
is dropped after three, a killed one at once (its kernel resets the connection).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from http import HTTPStatus
from typing import Any

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from hub.api.linkprobe import check_link
from hub.api.tunnels import TunnelRegistry
from hub.cluster.directory import HubDirectory
from hub.cluster.identity import PeerIdentity, peer_hub_id
from hub.cluster.route import PeerRoute, SessionCount
from hub.cluster.splice import splice
from hub.net.listener import Listener, ListenerLimits
from remoteler.errors import RemotelerError
from remoteler.hubconn import open_ws
from remoteler.protocol import PEER_SUBPROTOCOL, RELAY_KIND, SSH_KIND
from remoteler.wire.aio import ChannelRequest, Tunnel
from remoteler.wire.codes import OpenFailure
from remoteler.wire.connection import Connection, Role
from remoteler.wire.exceptions import ChannelOpenError, TunnelClosed
from remoteler.wire.limits import Limits

log = logging.getLogger("remoteler.hub.cluster.peers")

#: Seconds between heartbeats on a peer link (three missed ones end it).
HEARTBEAT = 5.0
#: Seconds between two looks for peers to link to.
MAINTAIN_INTERVAL = 2.0
#: Seconds one dial of a peer may take.
DIAL_TIMEOUT = 5.0
#: Seconds before a peer whose dial failed is dialled again by the maintainer.
REDIAL_AFTER = 2.0
#: Most channels open at once on one link (sessions relayed between two hubs).
MAX_CHANNELS = 8192
#: Longest wait a relayed open may ask of the holding hub's agent, seconds.
MAX_OPEN_TIMEOUT = 60.0


def peer_limits(dialer: bool) -> Limits:
    return Limits(
        max_channels=MAX_CHANNELS,
        heartbeat_interval=HEARTBEAT,
        allowed_misses=3,
        send_heartbeats=dialer,
    )


class PeerLinks:
    """This hub's links to its peers; :meth:`start`, :meth:`run`, then :meth:`close`."""

    def __init__(
        self,
        hub_id: str,
        directory: HubDirectory,
        registry: TunnelRegistry,
        identity: PeerIdentity,
        listener_limits: ListenerLimits | None = None,
        rng: random.Random | None = None,
    ) -> None:
        self.hub_id = hub_id
        self.directory = directory
        self.registry = registry
        self.identity = identity
        self._client_ctx = identity.client_context()
        self.listener_limits = listener_limits
        self.listener: Listener | None = None
        self.addr: tuple[str, int] | None = None
        #: hub id -> the newest live link to it
        self._links: dict[str, Tunnel] = {}
        self._dials: dict[str, asyncio.Future[Tunnel | None]] = {}
        self._failed_at: dict[str, float] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self.rng = rng or random.Random()
        #: sessions relayed for peers through tunnels held here (hub id -> count)
        self.relayed: dict[str, int] = {}
        #: sessions of this hub's users relayed through peers (a drain waits for them)
        self.outgoing = SessionCount()
        self.closing = False

    # -- lifecycle -------------------------------------------------------------

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self.listener = Listener(
            self._serve,
            self.identity.server_context(),
            process_request=self._process_request,
            subprotocols=[PEER_SUBPROTOCOL],
            max_size=peer_limits(False).max_frame_bytes + 1024,
            limits=self.listener_limits,
        )
        server = await self.listener.start(host, port, backlog=256)
        sock = next(iter(server.sockets))
        name = sock.getsockname()
        self.addr = (name[0], name[1])
        return self.addr

    def set_identity(self, identity: PeerIdentity) -> None:
        """A new certificate (CA rotation, half life): new links use it."""
        self.identity = identity
        self._client_ctx = identity.client_context()
        if self.listener is not None:
            self.listener.ssl_ctx = identity.server_context()

    def drop_links(self, reason: str) -> None:
        """End every link now (the next route dials again)."""
        links = list(self._links.values())
        self._links.clear()
        for link in links:
            self._spawn(link.close(reason=reason))

    async def close(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        links = list(self._links.values())
        self._links.clear()
        await asyncio.gather(
            *(t.close(reason="hub stopping") for t in links), return_exceptions=True
        )
        if self.listener is not None and self.listener.ws_server is not None:
            self.listener.ws_server.close(close_connections=True)
            await self.listener.ws_server.wait_closed()

    async def run(self) -> None:
        """Until cancelled: keep a link to every live peer whose id sorts after ours."""
        while True:
            now = time.monotonic()
            for peer in self.directory.peers():
                if (
                    peer.id > self.hub_id
                    and peer.peer_addr
                    and peer.id not in self._links
                    and peer.id not in self._dials
                    and now - self._failed_at.get(peer.id, -1e9) >= REDIAL_AFTER
                ):
                    self._spawn(self._dial_quietly(peer.id))
            await asyncio.sleep(MAINTAIN_INTERVAL)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _dial_quietly(self, hub_id: str) -> None:
        await self.link(hub_id, DIAL_TIMEOUT)

    # -- links -----------------------------------------------------------------

    def up(self, hub_id: str) -> Tunnel | None:
        link = self._links.get(hub_id)
        return link if link is not None and not link.closed.is_set() else None

    def linked(self) -> list[str]:
        return sorted(h for h in self._links if self.up(h) is not None)

    async def link(self, hub_id: str, timeout: float = DIAL_TIMEOUT) -> Tunnel | None:
        """The live link to ``hub_id``, dialling it if there is none (one dial at a time
        per peer, shared by every caller); None if it cannot be reached."""
        if (link := self.up(hub_id)) is not None:
            return link
        if self.closing:
            return None
        dial = self._dials.get(hub_id)
        if dial is None:
            dial = self._dials[hub_id] = asyncio.ensure_future(self._dial(hub_id, timeout))
            dial.add_done_callback(lambda _f: self._dials.pop(hub_id, None))
        try:
            return await asyncio.shield(dial)
        except Exception:
            return None

    async def _dial(self, hub_id: str, timeout: float) -> Tunnel | None:
        record = self.directory.hubs.get(hub_id)
        if record is None or not record.peer_addr:
            return None
        try:
            ws = await open_ws(
                record.peer_addr,
                "/v1/peer",
                self._client_ctx,
                subprotocol=PEER_SUBPROTOCOL,
                timeout=timeout,
                max_size=peer_limits(True).max_frame_bytes + 1024,
            )
        except RemotelerError as err:
            self._failed_at[hub_id] = time.monotonic()
            log.warning("peer link failed: %s", err, extra={"peer": hub_id})
            return None
        ssl_object = ws.transport.get_extra_info("ssl_object")
        got = peer_hub_id(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        if got != hub_id:
            await ws.close(1008, "not the hub expected")
            self._failed_at[hub_id] = time.monotonic()
            log.warning(
                "peer link refused: the hub at %s is %r, not %r",
                record.peer_addr,
                got,
                hub_id,
                extra={"peer": hub_id},
            )
            return None
        core = Connection(Role.DIALER, peer_limits(True), now=time.monotonic())
        tunnel = Tunnel(ws, core, on_channel=lambda r: self._on_channel(r, hub_id))
        self._spawn(self._run_link(hub_id, tunnel, dialed=True))
        return tunnel

    async def _run_link(self, hub_id: str, tunnel: Tunnel, dialed: bool) -> None:
        self._links[hub_id] = tunnel
        self._failed_at.pop(hub_id, None)
        log.info("peer link up", extra={"peer": hub_id, "dialed": dialed})
        try:
            await tunnel.run()
        finally:
            if self._links.get(hub_id) is tunnel:
                del self._links[hub_id]
            log.info(
                "peer link down",
                extra={
                    "peer": hub_id,
                    "code": getattr(tunnel.close_code, "name", None),
                    "reason": tunnel.close_reason,
                },
            )

    # -- the listening side ----------------------------------------------------

    async def _process_request(
        self, connection: ServerConnection, request: Request
    ) -> Response | None:
        ssl_object = connection.transport.get_extra_info("ssl_object")
        peer = peer_hub_id(ssl_object.getpeercert(binary_form=True) if ssl_object else None)
        if request.path != "/v1/peer":
            return connection.respond(HTTPStatus.NOT_FOUND, "this port only takes peer hubs\n")
        if peer is None or peer == self.hub_id:
            return connection.respond(HTTPStatus.FORBIDDEN, "a hub certificate is needed\n")
        connection.remoteler_peer = peer  # type: ignore[attr-defined]
        return None

    async def _serve(self, ws: ServerConnection) -> None:
        hub_id: str = ws.remoteler_peer  # type: ignore[attr-defined]
        core = Connection(Role.LISTENER, peer_limits(False), now=time.monotonic())
        tunnel = Tunnel(ws, core, on_channel=lambda r: self._on_channel(r, hub_id))
        with contextlib.suppress(ConnectionClosed):
            await self._run_link(hub_id, tunnel, dialed=False)

    # -- routes ----------------------------------------------------------------

    async def route_to(
        self, node_id: str, holders: list[str], exclude: frozenset[str] = frozenset()
    ) -> PeerRoute | None:
        """A route to ``node_id`` through one of the hubs holding it: a hub we are
        linked to first (at random, to spread sessions; a link silent for long is
        probed first), else one we can dial (not one whose dial just failed)."""
        holders = [h for h in dict.fromkeys(holders) if h != self.hub_id and h not in exclude]
        linked = [h for h in holders if self.up(h) is not None]
        self.rng.shuffle(linked)
        now = time.monotonic()
        rest = [
            h
            for h in holders
            if h not in linked
            and h in self.directory.hubs
            and now - self._failed_at.get(h, -1e9) >= REDIAL_AFTER
        ]
        for hub_id in [*linked, *rest]:
            link = await self.link(hub_id, DIAL_TIMEOUT)
            if link is None:
                continue
            if hub_id in linked and await check_link(link) is not None:
                log.warning("peer link silent: not routing through it", extra={"peer": hub_id})
                continue
            return PeerRoute(link, node_id, hub_id, self.outgoing)
        return None

    async def _on_channel(self, request: ChannelRequest, peer: str) -> None:
        """A peer's ``relay``: open the channel on the agent's tunnel held here, splice."""
        if request.kind != RELAY_KIND:
            request.reject(OpenFailure.UNKNOWN_KIND, "unknown channel kind on a peer link")
            return
        if self.registry.leaving:  # this hub is draining: the caller tries another holder
            request.reject(OpenFailure.CONNECT_FAILED, "hub is leaving the cluster")
            return
        meta = request.meta
        node_id, kind, inner_meta = meta.get("node"), meta.get("kind"), meta.get("meta")
        timeout = meta.get("timeout", 15.0)
        if not (
            isinstance(node_id, str)
            and isinstance(kind, str)
            and isinstance(inner_meta, dict)
            and isinstance(timeout, int | float)
        ):
            request.reject(OpenFailure.REFUSED, "malformed relay request")
            return
        if kind != SSH_KIND:  # a peer relays users' sessions, nothing else an agent serves
            request.reject(OpenFailure.PROHIBITED, f"{kind[:32]!r} is not relayed")
            return
        live = self.registry.get(node_id)
        if live is None:
            request.reject(OpenFailure.CONNECT_FAILED, "node not connected to this hub")
            return
        if await check_link(live.tunnel) is not None:  # frozen: say so now, not in 15 s
            request.reject(OpenFailure.CONNECT_FAILED, "node's tunnel to this hub is silent")
            return
        fields = {"peer": peer, "node_id": node_id, "session_id": inner_meta.get("session_id")}
        try:
            inner = await live.tunnel.open_channel(
                kind, inner_meta, timeout=min(max(1.0, float(timeout)), MAX_OPEN_TIMEOUT)
            )
        except ChannelOpenError as exc:
            code = OpenFailure(exc.code) if exc.code in _CODES else OpenFailure.REFUSED
            request.reject(code, exc.reason)
            return
        except (TunnelClosed, TimeoutError):
            request.reject(OpenFailure.CONNECT_FAILED, "node's tunnel closed")
            return
        try:
            outer = request.accept()
        except TunnelClosed:
            inner.close()
            return
        live.session_started()
        self.relayed[peer] = self.relayed.get(peer, 0) + 1
        log.info("peer relay start", extra=fields)
        try:
            to_node, to_peer = await splice(outer, inner)
        finally:
            live.session_ended()
            self.relayed[peer] -= 1
        log.info("peer relay end", extra={**fields, "bytes_in": to_node, "bytes_out": to_peer})


_CODES = frozenset(int(c) for c in OpenFailure)
