"""The hub's accept loop: two lanes, so a reconnect storm cannot starve ``tsh``.

asyncio starts a TLS handshake for every accepted connection at once: 10,000
agents coming back after a restart each get a slice of the loop, every
handshake (and every user's) takes as long as all of them together, and clients
time out and retry, wasting the work already done. Here each connection's
ClientHello is peeked first (:mod:`remoteler.tlshello`, no TLS yet): agents
(ALPN ``remoteler-tunnel/1``) wait in a FIFO lane that admits a few handshakes
at a time, as many as the event loop's lag allows (:mod:`hub.net.admission`), and
holds each permit for the TLS handshake; users go through a lane of their own
whose ``user_handshakes`` permits lag does not shrink. Connections whose peer
gave up while queued are dropped without a handshake, and a peer that does not
send a complete ClientHello in time (slowloris) is closed. One source address
holds only a few permits of a lane, addresses take turns for the rest, and a
client that does not answer the hub's TLS flight within a few seconds loses its
permit and its connection (:mod:`hub.net.tlswatch`). Dropped connections are
counted and summarised once a minute (:mod:`hub.net.dropcount`), not logged each.

The websockets side reuses the library's public sans-I/O ``ServerProtocol`` and
asyncio ``ServerConnection``/``Server``; only the accept and the TLS start are ours.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, cast

from websockets.asyncio.server import Server, ServerConnection
from websockets.http11 import Request, Response
from websockets.protocol import State
from websockets.server import ServerProtocol
from websockets.typing import Subprotocol

from hub.net.admission import Gate, LagGovernor, source_key
from hub.net.dropcount import DropCounter
from hub.net.tlswatch import HandshakeDeadline, WatchedContext
from hub.net.wsguard import GuardedConnection, WsGuardLimits
from remoteler.protocol import TUNNEL_ALPN, WEB_ALPNS
from remoteler.tlshello import MAX_HELLO, NotClientHello, parse_client_hello

log = logging.getLogger("remoteler.hub.listener")

ProcessRequest = Callable[[ServerConnection, Request], Awaitable[Response | None]]
Handler = Callable[[ServerConnection], Awaitable[None]]


@dataclass(frozen=True)
class ListenerLimits:
    #: most agent TLS handshakes in progress at once. A permit is held for the
    #: client's round trips too, so over cellular links (0.1-0.5 s RTT) a small
    #: number would cap the rate: 64 admits ~100-600 agents/s at cellular RTTs.
    #: Fewer are let in while the event loop lags (hub/net/admission.py).
    tunnel_handshakes: int = 64
    #: loop lag (seconds) above which fewer agent handshakes are let in
    lag_target: float = 0.02
    #: seconds between loop-lag measurements
    lag_tick: float = 0.05
    #: connections accepted in one go before other work gets the loop
    accept_burst: int = 32
    #: user (tsh, tctl, joins) TLS handshakes in progress at once
    user_handshakes: int = 64
    #: agent handshakes one source address (IPv4, or IPv6 /64) holds at once; its
    #: others wait their turn (addresses take turns), so a fleet behind one carrier
    #: NAT is slowed, never refused: 1,000 agents at 0.5 s RTT are in within ~30 s
    tunnel_handshakes_per_addr: int = 32
    #: user handshakes one source address holds at once (others wait their turn)
    user_handshakes_per_addr: int = 8
    #: connections from one address accepted but not yet through TLS (ClientHello,
    #: queue, handshake); beyond it, closed at once. Agents retry with backoff.
    max_pending_per_addr: int = 2_000
    #: seconds a peer has to answer the hub's TLS flight (one round trip and one
    #: signature): 5 s covers a 1 s cellular RTT plus two TCP retransmissions
    tls_reply_timeout: float = 5.0
    #: seconds between summaries of dropped connections (hub/net/dropcount.py)
    drop_summary_interval: float = 60.0
    #: connections accepted but not yet through their handshake; beyond it, closed at once
    max_queued: int = 20_000
    #: open web console connections (browsers keep a few each), in all and per address
    max_web_connections: int = 2_048
    max_web_connections_per_addr: int = 64
    #: seconds a web connection has to send its first request's headers
    web_header_timeout: float = 10.0
    #: seconds for a peer to send its whole ClientHello
    hello_timeout: float = 10.0
    #: seconds for the whole TLS handshake and for the websocket upgrade, each
    handshake_timeout: float = 15.0
    #: a connection queued longer than this is dropped (its peer has given up)
    max_queue_wait: float = 60.0


class _Lane:
    """Connections waiting for one of its gate's handshake permits (FIFO per source
    address, addresses in turn)."""

    def __init__(self, name: str, size: int, per_addr: int) -> None:
        self.name = name
        self.gate = Gate(size, per_key=per_addr)
        self.admitted = 0

    @property
    def waiting(self) -> int:
        return self.gate.waiting


class _AcceptLoop:
    """What websockets' Server needs of an asyncio.Server, over our own accept loop.

    ``admitting`` are the tasks of connections not yet through TLS (websockets
    only knows the open ones). :meth:`close` only stops accepting (a drain lets
    them through); :meth:`wait_closed`, the server's final close, cancels them,
    which closes their sockets and gives their permits back."""

    def __init__(
        self,
        sock: socket.socket,
        admitting: set[asyncio.Task[None]],
        *runs: Callable[[], Awaitable[None]],
    ) -> None:
        self.sockets = (sock,)
        self._loop = asyncio.get_running_loop()
        self._tasks = [asyncio.ensure_future(run()) for run in runs]
        self._admitting = admitting
        self._serving = True

    def is_serving(self) -> bool:
        return self._serving

    def get_loop(self) -> asyncio.AbstractEventLoop:
        return self._loop

    def close(self) -> None:
        if self._serving:
            self._serving = False
            for task in self._tasks:
                task.cancel()
            self.sockets[0].close()

    async def wait_closed(self) -> None:
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        admitting = list(self._admitting)
        for task in admitting:
            task.cancel()
        await asyncio.gather(*admitting, return_exceptions=True)

    async def start_serving(self) -> None:  # serving from the start
        return None


class Listener:
    """Accept TLS websocket connections on ``sock`` and hand them to ``handler``."""

    def __init__(
        self,
        handler: Handler,
        ssl_ctx: ssl.SSLContext,
        *,
        process_request: ProcessRequest,
        subprotocols: Sequence[str],
        max_size: int,
        limits: ListenerLimits | None = None,
    ) -> None:
        self.handler = handler
        self.ssl_ctx = ssl_ctx
        self.process_request = process_request
        self.subprotocols = [Subprotocol(s) for s in subprotocols]
        self.max_size = max_size
        self.limits = limits or ListenerLimits()
        self.guard = WsGuardLimits()
        #: the web console (hub/web): its TLS context and aiohttp's protocol factory; a
        #: ClientHello offering http/1.1 or h2 goes there while both are set
        self.web_ctx: ssl.SSLContext | None = None
        self.web_factory: Callable[[], asyncio.Protocol] | None = None
        #: open web connections, in all and per source address (capped below)
        self.web_open: dict[str, int] = {}
        self.lanes = {
            "web": _Lane("web", self.limits.user_handshakes, self.limits.user_handshakes_per_addr),
            "tunnel": _Lane(
                "tunnel", self.limits.tunnel_handshakes, self.limits.tunnel_handshakes_per_addr
            ),
            "user": _Lane(
                "user", self.limits.user_handshakes, self.limits.user_handshakes_per_addr
            ),
        }
        self.governor = LagGovernor(self.limits.tunnel_handshakes, target=self.limits.lag_target)
        self.queued = 0
        self.refused = 0
        #: set by a draining hub: agents' connections are closed before TLS (cheap, as a
        #: closed port was); users still get through to hear "hub is restarting"
        self.refuse_tunnels = False
        #: connections per source address accepted and not yet through TLS
        self.pending: dict[str, int] = {}
        self.drops = DropCounter(self.limits.drop_summary_interval)
        self._conn_tasks: set[asyncio.Task[None]] = set()
        self.ws_server: Server | None = None
        #: share the port with other processes (``hub start --workers``, hub/workers.py)
        self.reuse_port = False

    async def start(self, host: str, port: int, backlog: int = 4096) -> Server:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if self.reuse_port:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            sock.bind((host, port))
            sock.listen(backlog)
            sock.setblocking(False)
        except OSError:
            sock.close()
            raise

        async def never() -> asyncio.Server:  # pragma: no cover - replaced below
            raise RuntimeError("not used")

        # websockets logs "connection open/closed" per connection at INFO: at 10,000
        # agents that is noise (our own "tunnel up/down" lines say more) and ~3% of a
        # reconnect storm's CPU. Its warnings and errors still get through.
        ws_log = logging.getLogger("remoteler.hub.ws")
        ws_log.setLevel(logging.WARNING)
        server = Server(never, self._protocol_handler, ws_log)
        server.server = cast(
            asyncio.Server,
            _AcceptLoop(sock, self._conn_tasks, lambda: self._accept(sock), self._govern),
        )
        self.ws_server = server
        return server

    async def _govern(self) -> None:
        """Measure the loop's lag each tick; let in as many agent handshakes as it allows."""
        loop = asyncio.get_running_loop()
        tick = self.limits.lag_tick
        gate = self.lanes["tunnel"].gate
        while True:
            start = loop.time()
            await asyncio.sleep(tick)
            gate.resize(self.governor.observe(loop.time() - start - tick, gate.waiting > 0))
            line = self.drops.summary(loop.time())
            if line is not None:
                log.info(line)

    # accept and classify ----------------------------------------------------
    async def _accept(self, sock: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        burst = 0
        while True:
            burst += 1
            if burst >= self.limits.accept_burst:
                # sock_accept does not yield while connections are pending: 4,096 of
                # them in the backlog would be one long loop iteration.
                burst = 0
                await asyncio.sleep(0)
            try:
                conn, addr = await loop.sock_accept(sock)
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    log.error("out of file descriptors; pausing accept for 1 s")
                    await asyncio.sleep(1.0)
                    continue
                if exc.errno in _PEER_ERRORS:  # that connection failed, not the listener
                    continue
                raise
            try:
                conn.setblocking(False)
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:  # reset already (EINVAL on some kernels)
                conn.close()
                continue
            key = source_key(str(addr[0]))
            refused = None
            if self.queued >= self.limits.max_queued:
                refused = "queue full"
            elif self.pending.get(key, 0) >= self.limits.max_pending_per_addr:
                refused = "per-address cap"
            if refused is not None:
                self.refused += 1
                self.drops.add("refused", refused, loop.time(), key)
                conn.close()
                continue
            self.pending[key] = self.pending.get(key, 0) + 1
            self.queued += 1
            task = asyncio.ensure_future(self._admit(conn, key))
            self._conn_tasks.add(task)
            task.add_done_callback(self._conn_tasks.discard)

    async def _admit(self, conn: socket.socket, key: str) -> None:
        """Take one accepted connection through ClientHello, queue and TLS; the
        caller has counted it in ``queued`` and ``pending``."""
        loop = asyncio.get_running_loop()
        gate: Gate | None = None
        tls = False  # once the TLS start has it, the socket is the transport's to close
        try:
            try:
                lane_name = await self._classify(conn)
                lane = self.lanes[lane_name]
            except (NotClientHello, TimeoutError, OSError) as exc:
                self.drops.add("hello", _hello_why(exc), loop.time(), key)
                conn.close()
                return
            if self.refuse_tunnels and lane_name == "tunnel":
                self.drops.add("queue", "hub draining", loop.time(), key)
                conn.close()
                return
            if lane_name == "web" and not self._web_room(key):
                self.drops.add("queue", "web connections cap", loop.time(), key)
                conn.close()
                return
            queued_at = time.monotonic()
            await lane.gate.acquire(key)
            gate = lane.gate
            if time.monotonic() - queued_at > self.limits.max_queue_wait:
                why = "waited too long"
            elif _peer_gone(conn):
                why = "peer gave up"
            else:
                why = None
            if why is not None:
                self.drops.add("queue", why, loop.time(), key)
                conn.close()  # the peer gave up while queued: save the handshake
                return
            lane.admitted += 1
            tls = True
            if lane_name == "web":
                await self._start_web_tls(conn, key)
            else:
                await self._start_tls(conn, key)
            # The permit covered the CPU-heavy part. The websocket upgrade that follows
            # has its own timeout; a client that stalls there no longer holds a permit.
        finally:
            if not tls:
                conn.close()  # cancelled (the listener closes) or an unexpected error
            self.queued -= 1
            left = self.pending[key] - 1
            if left:
                self.pending[key] = left
            else:
                del self.pending[key]
            if gate is not None:
                gate.release(key)

    async def _classify(self, conn: socket.socket) -> str:
        loop = asyncio.get_running_loop()
        pause = 0.05
        async with asyncio.timeout(self.limits.hello_timeout):
            while True:
                try:  # the hello has usually arrived by the time we accept
                    data = conn.recv(MAX_HELLO, socket.MSG_PEEK | socket.MSG_DONTWAIT)
                except BlockingIOError:
                    await _readable(loop, conn)
                    continue
                if not data:
                    raise ConnectionResetError(errno.ECONNRESET, "closed before ClientHello")
                if _offers_tunnel_alpn(data):
                    return "tunnel"
                hello = parse_client_hello(data)
                if hello is not None:
                    if TUNNEL_ALPN in hello.alpn:
                        return "tunnel"
                    if self.web_factory is not None and WEB_ALPNS & set(hello.alpn):
                        return "web"
                    return "user"
                if len(data) >= MAX_HELLO:
                    raise NotClientHello("ClientHello too large")
                # The rest is in flight; peeking again at once would spin. Back off,
                # so thousands of slow senders cost few wake-ups.
                await asyncio.sleep(pause)
                pause = min(pause * 2, 1.0)

    def _ws_aborted(self, kind: str, source: str) -> None:
        """A websocket cut by hub/net/wsguard.py: counted into the summary, not logged alone,
        under the key the other stages use (an IPv6 peer's /64)."""
        self.drops.add("ws", kind, asyncio.get_running_loop().time(), source_key(source))

    def _web_room(self, key: str) -> bool:
        total = sum(self.web_open.values())
        return (
            total < self.limits.max_web_connections
            and self.web_open.get(key, 0) < self.limits.max_web_connections_per_addr
        )

    async def _start_web_tls(self, conn: socket.socket, key: str) -> bool:
        """A browser's connection: the web certificate, then aiohttp (hub/web/app.py).
        Counted per source address until it closes."""
        assert self.web_factory is not None and self.web_ctx is not None
        make = self.web_factory
        counts = self.web_open
        counts[key] = counts.get(key, 0) + 1
        released = False

        def release() -> None:
            nonlocal released
            if not released:
                released = True
                left = counts.get(key, 1) - 1
                if left > 0:
                    counts[key] = left
                else:
                    counts.pop(key, None)

        def factory() -> asyncio.Protocol:
            return _Counted(make(), release, self.limits.web_header_timeout)

        ok = await self._start_tls(conn, key, factory, self.web_ctx)
        if not ok:
            release()
        return ok

    async def _start_tls(
        self,
        conn: socket.socket,
        key: str,
        protocol_factory: Callable[[], asyncio.Protocol] | None = None,
        ssl_ctx: ssl.SSLContext | None = None,
    ) -> bool:
        """The TLS handshake, given up when the peer does not answer our flight within
        ``tls_reply_timeout`` (hub/net/tlswatch.py) or takes ``handshake_timeout`` in all."""
        loop = asyncio.get_running_loop()
        assert self.ws_server is not None
        server = self.ws_server

        def factory() -> ServerConnection:
            protocol = ServerProtocol(
                subprotocols=self.subprotocols,
                max_size=self.max_size,
                logger=server.logger,
            )
            # Caps the bytes a peer can make us buffer, bounds close() (hub/net/wsguard.py).
            return GuardedConnection(
                protocol, server, ping_interval=None, guard=self.guard, on_abort=self._ws_aborted
            )

        deadline = HandshakeDeadline(
            loop.time(), self.limits.tls_reply_timeout, self.limits.handshake_timeout
        )
        watched = WatchedContext(ssl_ctx or self.ssl_ctx, deadline, loop.time)
        handshake = asyncio.ensure_future(
            loop.connect_accepted_socket(
                protocol_factory or factory,
                conn,
                ssl=cast(ssl.SSLContext, watched),
                ssl_handshake_timeout=self.limits.handshake_timeout,
            )
        )
        try:
            while not handshake.done():
                # Wake at the deadline, and at least once per reply timeout: a flight
                # sent meanwhile moves the deadline earlier than the one we slept for.
                now = loop.time()
                wake = min(deadline.deadline(), now + self.limits.tls_reply_timeout)
                await asyncio.wait((handshake,), timeout=max(0.0, wake - now))
                if not handshake.done() and deadline.expired(loop.time()):
                    handshake.cancel()  # asyncio aborts the transport
                    await asyncio.wait((handshake,))
                    self.drops.add("tls", deadline.why(), loop.time(), key)
                    conn.close()
                    return False
            handshake.result()
        except (OSError, ssl.SSLError, TimeoutError, ConnectionError) as exc:
            self.drops.add("tls", _tls_why(exc), loop.time(), key)
            conn.close()
            return False
        except Exception:  # a bug above TLS: this connection goes, the listener stays
            log.exception("connection setup failed")
            conn.close()
            return False
        finally:
            if not handshake.done():
                handshake.cancel()  # we are cancelled (shutdown)
            watched.detach()
        return True

    # websocket --------------------------------------------------------------
    async def _protocol_handler(self, connection: ServerConnection) -> None:
        """As websockets' own: upgrade within a timeout, then run the handler."""
        server = self.ws_server
        assert server is not None
        try:
            async with asyncio.timeout(self.limits.handshake_timeout):
                await connection.handshake(self.process_request, None, None)
            if connection.protocol.state is not State.OPEN:
                connection.transport.abort()
                return
            server.all_connections.add(connection)
            try:
                async with connection:
                    await self.handler(connection)
            except Exception:
                log.exception("connection handler failed")
            finally:
                server.all_connections.discard(connection)
        except Exception:
            connection.transport.abort()
        finally:
            server.handler_tasks.discard(cast(Any, asyncio.current_task()))

    def stats(self) -> dict[str, int]:
        out = {
            "queued": self.queued,
            "refused": self.refused,
            "tunnel_capacity": self.lanes["tunnel"].gate.capacity,
        }
        for name, lane in self.lanes.items():
            out[f"{name}_waiting"] = lane.waiting
            out[f"{name}_admitted"] = lane.admitted
        for stage, count in self.drops.totals.items():
            out[f"dropped_{stage}"] = count
        return out


class _Counted(asyncio.Protocol):
    """A protocol (aiohttp's request handler) whose connection is counted until it ends
    (``release`` runs once, at ``connection_lost``) and must send its first request's
    headers within ``header_timeout`` seconds (a slowloris client is cut: aiohttp's own
    timers start only once a request is in)."""

    def __init__(
        self, inner: asyncio.Protocol, release: Callable[[], None], header_timeout: float
    ) -> None:
        self.inner = inner
        self.release = release
        self.header_timeout = header_timeout
        self._tail = b""
        self._timer: asyncio.TimerHandle | None = None
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self.header_timeout, transport.abort)  # type: ignore[attr-defined]
        self.inner.connection_made(transport)

    def data_received(self, data: bytes) -> None:
        if self._timer is not None:
            seen = self._tail + data
            if b"\r\n\r\n" in seen:
                self._timer.cancel()
                self._timer = None
            else:
                self._tail = seen[-3:]
        self.inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self.release()
        self.inner.connection_lost(exc)


#: accept() errors that belong to one pending connection: retry, as accept(2) says
#: Linux requires (it reports the new socket's network errors through accept).
_PEER_ERRORS = frozenset(
    getattr(errno, name)
    for name in (
        "ECONNABORTED",
        "EPROTO",
        "ENETDOWN",
        "ENOPROTOOPT",
        "EHOSTDOWN",
        "ENONET",
        "EHOSTUNREACH",
        "EOPNOTSUPP",
        "ENETUNREACH",
        "EPERM",
    )
    if hasattr(errno, name)
)

_TUNNEL_ALPN_ENTRY = bytes([len(TUNNEL_ALPN)]) + TUNNEL_ALPN.encode()


def _offers_tunnel_alpn(data: bytes) -> bool:
    """Fast path for a storm of agents: a complete one-record ClientHello holding the
    tunnel ALPN entry. A miss falls back to the full parse; a client that plants the
    bytes elsewhere only picks its queue (lanes are scheduling, not authentication)."""
    if len(data) < 5 or data[0] != 0x16:
        return False
    end = 5 + int.from_bytes(data[3:5], "big")
    return len(data) >= end and _TUNNEL_ALPN_ENTRY in data[5:end]


async def _readable(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    fut: asyncio.Future[None] = loop.create_future()
    fd = conn.fileno()

    def ready() -> None:
        if not fut.done():
            fut.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await fut
    finally:
        loop.remove_reader(fd)


#: tcp_info.tcpi_state values (linux/tcp_states.h) of a peer that closed or reset.
_TCP_CLOSE, _TCP_CLOSE_WAIT = 7, 8


def _peer_gone(conn: socket.socket) -> bool:
    """True if the peer closed or reset while we kept it waiting.

    Peeking cannot see a FIN behind the unread ClientHello, so ask the kernel for
    the TCP state (Linux); elsewhere only an error on the socket counts.
    """
    try:
        if conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
            return True
        tcp_info = getattr(socket, "TCP_INFO", None)
        if tcp_info is None:
            return False
        state = conn.getsockopt(socket.IPPROTO_TCP, tcp_info, 1)[0]
    except OSError:
        return True
    return state in (_TCP_CLOSE, _TCP_CLOSE_WAIT)


def _hello_why(exc: BaseException) -> str:
    if isinstance(exc, NotClientHello):
        return "not TLS"
    if isinstance(exc, TimeoutError):
        return "no ClientHello in time"
    if isinstance(exc, ConnectionResetError):
        return "closed early"
    return _errno_name(exc)


def _tls_why(exc: BaseException) -> str:
    if isinstance(exc, ssl.SSLError):
        return (exc.reason or exc.__class__.__name__).lower().replace("_", " ")
    if isinstance(exc, TimeoutError | ConnectionAbortedError):
        return "timed out"
    if isinstance(exc, ConnectionResetError | BrokenPipeError):
        return "reset by peer"
    return _errno_name(exc)


def _errno_name(exc: BaseException) -> str:
    code = getattr(exc, "errno", None)
    if isinstance(code, int) and code in errno.errorcode:
        return errno.errorcode[code]
    return type(exc).__name__
