"""The web console's HTTP side (aiohttp), served on the hub's own port (docs/web.md).

The listener sends a connection here when its ClientHello offers ``http/1.1`` or
``h2`` (browsers, curl, Prometheus); ``tsh``, ``tctl`` and agents offer neither
and keep the pinned API. Routes:

- ``/healthz`` (the process answers) and ``/readyz`` (storage reachable, listener
  up), without authentication; ``/metrics`` with ``Authorization: Bearer TOKEN``
  (``--metrics-token-file``).
- ``/web/...``: the console's page (one document, its modules under
  ``/web/static``), and its JSON API under ``/web/api``: login and logout, the
  fleet (sorted and paged here), live node states (server-sent events), a node's
  page, the terminal (websocket), audit export, and ``/web/api/call/METHOD``:
  the same RPC methods ``tsh`` and ``tctl`` call, with the session's user as the
  caller, so every permission check is the one the command line gets.

Every state change needs the session's CSRF token and a same-origin request, and
is audited (``web.action``) with the user's name and address.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from hub.net.identity import Identity
from hub.web import fleet
from hub.web.guard import SAFE_METHODS, new_nonce, same_origin, security_headers
from hub.web.metrics import CONTENT_TYPE, HubMetrics
from hub.web.sessions import COOKIE, CSRF_HEADER, WebSession, WebSessions, csrf_ok
from hub.web.sso_routes import SSORoutes
from hub.web.terminal import MAX_MESSAGE, clamp_size, run_terminal
from remoteler.audit.events import HUB_NODE, EventType, make_event
from remoteler.ca import generate_private_key, public_key_to_openssh
from remoteler.console import parse_baud
from remoteler.errors import AccessDenied, AuthError, RemotelerError, UsageError
from remoteler.identity import UserIdentity
from remoteler.locks import find_lock

if TYPE_CHECKING:
    from hub.api.server import HubServer
    from hub.storage.api import Node

log = logging.getLogger("remoteler.hub.web")

STATIC = Path(__file__).parent / "static"
#: RPC methods the console may call for its user (each checks the user's rights).
READ_METHODS = frozenset(
    {
        "nodes.list",
        "audit.session",
        "admin.whoami",
        "admin.users.ls",
        "admin.tokens.ls",
        "admin.nodes.ls",
        "admin.roles.ls",
        "admin.status",
        "admin.audit.search",
        "admin.locks.ls",
        "admin.firmware.status",
        "admin.firmware.trust_ls",
    }
)
WRITE_METHODS = frozenset(
    {
        "admin.users.add",
        "admin.users.rm",
        "admin.users.unlock",
        "admin.tokens.add",
        "admin.tokens.rm",
        "admin.nodes.set",
        "admin.roles.put",
        "admin.roles.rm",
        "admin.locks.add",
        "admin.locks.rm",
        "admin.firmware.push",
        "admin.firmware.stop",
    }
)
MAX_BODY = 256 * 1024
#: Event streams and terminals: per web session and in all.
MAX_STREAMS_PER_SESSION = 4
MAX_TERMINALS_PER_SESSION = 8
MAX_STREAMS = 512
SSE_TICK = 2.0
#: Seconds between sweeps of idle, expired and locked web sessions.
SWEEP_EVERY = 2.0
SSO_PRUNE_EVERY = 60.0
#: Seconds a snapshot of the node rows serves the fleet view and its live views (a
#: node's online state comes from the tunnel registry, not from the snapshot).
NODES_EVERY = 2.0
#: Seconds the fleet view's firmware column may lag the roll-outs' store.
FIRMWARE_EVERY = 10.0
#: The login form's fields are cut here (a name, a password, a six-digit code).
MAX_FIELD = 1024


def _error(status: int, message: str, code: str = "") -> web.Response:
    return web.json_response({"error": message, "code": code}, status=status)


def _when(text: str, key: str) -> float:
    """Epoch seconds or an ISO date/time (UTC unless it says)."""
    from datetime import UTC, datetime

    try:
        return float(text)
    except ValueError:
        pass
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UsageError(f"{key} is epoch seconds or an ISO date, e.g. 2026-12-07T10:00") from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=UTC)
    return moment.timestamp()


def _limit(text: str) -> int:
    try:
        return min(10_000, max(1, int(text)))
    except ValueError:
        raise UsageError("limit is a whole number") from None


def _printable(event: dict[str, Any]) -> dict[str, Any]:
    """An event for JSON: bytes (a recording's chunks) as base64."""
    import base64

    fields = {
        k: base64.b64encode(v).decode() if isinstance(v, (bytes, bytearray)) else v
        for k, v in (event.get("fields") or {}).items()
    }
    return {**event, "fields": fields}


def _build_id(static_dir: Path) -> str:
    """A short digest of the built assets (names, sizes, times): changes with each build."""
    import hashlib

    digest = hashlib.sha256()
    if static_dir.is_dir():
        for path in sorted(static_dir.rglob("*")):
            if path.is_file():
                stat = path.stat()
                digest.update(
                    f"{path.relative_to(static_dir)}:{stat.st_size}:{stat.st_mtime_ns}".encode()
                )
    return digest.hexdigest()[:12]


def _status_of(exc: RemotelerError) -> int:
    if isinstance(exc, AuthError):
        return 401
    if isinstance(exc, AccessDenied):
        return 403
    if isinstance(exc, UsageError):
        return 400
    return 502


class WebConsole:
    def __init__(
        self,
        server: HubServer,
        hub_addr: Callable[[], str],
        *,
        idle_timeout: float,
        metrics_token: str | None = None,
        ready: Callable[[], Awaitable[str | None]] | None = None,
        static_dir: Path = STATIC,
    ) -> None:
        self.server = server
        self.hub_addr = hub_addr
        self.sessions = WebSessions(idle_timeout)
        self.metrics = HubMetrics(server, self.sessions)
        self.metrics_token = metrics_token
        self.ready = ready
        self.static_dir = static_dir
        #: the assets' build, in their URLs: cached for good by browsers, new URLs
        #: after a new build (relative imports between modules inherit it)
        self.build = _build_id(static_dir)
        self.streams = 0
        self._tasks: set[asyncio.Future[None]] = set()
        self._index: str | None = None
        self._firmware_cache: dict[str, dict[str, str]] = {}
        self._nodes_read: asyncio.Future[list[Node]] | None = None
        self._nodes_at = 0.0
        self._firmware_at = -FIRMWARE_EVERY
        self._sweeper: asyncio.Task[None] | None = None
        self._sso_pruned = 0.0
        self.runner: web.AppRunner | None = None

    # lifecycle ------------------------------------------------------------------
    def app(self) -> web.Application:
        app = web.Application(middlewares=[self._guard], client_max_size=MAX_BODY)
        r = app.router
        r.add_get("/healthz", self.healthz)
        r.add_get("/readyz", self.readyz)
        r.add_get("/metrics", self.metrics_page)
        r.add_get("/", self.root)
        r.add_post("/web/api/login", self.login)
        r.add_post("/web/api/logout", self.logout)
        r.add_get("/web/api/me", self.me)
        r.add_get("/web/api/nodes", self.nodes)
        r.add_get("/web/api/nodes/{name}", self.node)
        r.add_get("/web/api/events", self.events)
        r.add_get("/web/api/terminal", self.terminal)
        r.add_get("/web/api/audit/export", self.audit_export)
        r.add_get("/web/api/audit/search", self.audit_search)
        r.add_get("/web/api/sessions/{sid}", self.recording)
        r.add_post("/web/api/call/{method}", self.call)
        SSORoutes(self).add(r)  # single sign-on (hub/web/sso_routes.py, docs/sso.md)
        r.add_get("/web/static/{build}/{path:.+}", self.static)
        r.add_get("/web", self.page)
        r.add_get("/web/{page:.*}", self.page)
        return app

    async def start(self) -> web.Server:
        self.runner = web.AppRunner(
            self.app(), handle_signals=False, access_log=None, keepalive_timeout=30.0
        )
        await self.runner.setup()
        self.metrics.loop.start()
        self._sweeper = asyncio.ensure_future(self._sweep())
        server = self.runner.server
        assert server is not None
        return server

    async def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        self.metrics.loop.stop()
        for sid in [s.id for s in list(self.sessions._by_id.values())]:
            self.sessions.drop(sid, "the hub is stopping")
        if self.runner is not None:
            with contextlib.suppress(Exception):
                async with asyncio.timeout(5):
                    await self.runner.cleanup()

    async def _sweep(self) -> None:
        """End idle and expired sessions, and those of locked or removed users."""
        while True:
            await asyncio.sleep(SWEEP_EVERY)
            try:
                self.sessions.sweep()
                now = time.time()
                sso = self.server.sso
                if sso is not None and now - self._sso_pruned >= SSO_PRUNE_EVERY:
                    self._sso_pruned = now  # lapsed SSO logins and users (hub/sso/flow.py)
                    await sso.prune()
                for user in self.sessions.users():
                    lock = find_lock(self.server.locks.locks, user=user, now=now)
                    if lock is not None:
                        self.sessions.drop_user(user, lock.refusal())
                    elif await self.server.storage.users.get(user) is None:
                        self.sessions.drop_user(user, f"user {user!r} was removed")
            except Exception:
                log.exception("web session sweep failed")

    # middleware -----------------------------------------------------------------
    @web.middleware
    async def _guard(
        self, request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    ) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPException as exc:
            response = exc
        except RemotelerError as exc:
            response = _error(_status_of(exc), exc.message, exc.code)
        except Exception:
            log.exception("web request failed", extra={"path": request.path[:200]})
            response = _error(500, "the hub failed this request; see its log")
        if not response.prepared:  # streams and websockets set their own
            for key, value in security_headers(request.get("nonce")).items():
                response.headers.setdefault(key, value)
            if request.path.startswith("/web/api"):
                response.headers.setdefault("Cache-Control", "no-store")
        self.metrics.web_requests.labels(str(response.status)).inc()
        return response

    def _session(self, request: web.Request, *, state_change: bool = False) -> WebSession:
        session = self.sessions.get(request.cookies.get(COOKIE))
        if session is None:
            raise AuthError("not logged in, or the web session ended: log in again")
        if state_change or request.method not in SAFE_METHODS:
            sent = request.headers.get(CSRF_HEADER) or request.query.get("csrf")
            if not csrf_ok(session, sent) or not same_origin(request.headers, request.host):
                raise AccessDenied("missing or wrong CSRF token: reload the page")
        return session

    async def _audit(self, request: web.Request, user: str, action: str, **fields: Any) -> None:
        audit = self.server.audit
        if audit is not None:
            event = make_event(
                EventType.WEB_ACTION,
                node=HUB_NODE,
                user=user[:256],
                action=action[:128],
                remote_addr=request.remote or "",
                **fields,
            )
            await audit.record(event)

    # health and metrics -----------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok\n")

    async def readyz(self, request: web.Request) -> web.Response:
        why = await self.ready() if self.ready is not None else None
        if why is not None:
            return web.Response(status=503, text=f"not ready: {why}\n")
        return web.Response(text="ready\n")

    async def metrics_page(self, request: web.Request) -> web.Response:
        import hmac

        want = self.metrics_token
        sent = request.headers.get("Authorization", "")
        if not want or not hmac.compare_digest(sent.encode(), f"Bearer {want}".encode()):
            return web.Response(
                status=401,
                text="metrics need 'Authorization: Bearer TOKEN' "
                "(hub start --metrics-token-file)\n",
                headers={"WWW-Authenticate": "Bearer"},
            )
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    # the page ---------------------------------------------------------------------
    async def root(self, request: web.Request) -> web.Response:
        raise web.HTTPFound("/web/")

    async def page(self, request: web.Request) -> web.Response:
        if self._index is None:
            path = self.static_dir / "index.html"
            if not path.exists():
                return web.Response(
                    status=503,
                    text="the web console's assets are not built: run 'make web' (docs/web.md)\n",
                )
            self._index = path.read_text().replace("{{static}}", f"/web/static/{self.build}")
        nonce = new_nonce()
        request["nonce"] = nonce
        # The logged-in user and the CSRF token ride in the page: no round trip before
        # the first view (JSON in a meta tag's attribute, HTML-escaped).
        session = self.sessions.get(request.cookies.get(COOKIE))
        me = html.escape(json.dumps(self._me(session)) if session is not None else "", quote=True)
        body = self._index.replace("{{nonce}}", nonce).replace("{{me}}", me)
        return web.Response(
            text=body, content_type="text/html", headers={"Cache-Control": "no-store"}
        )

    async def static(self, request: web.Request) -> web.StreamResponse:
        rel = request.match_info["path"]
        root = self.static_dir.resolve()
        path = (root / rel).resolve()
        if not path.is_relative_to(root) or not path.is_file() or path.name == "index.html":
            raise web.HTTPNotFound()
        if request.match_info["build"] != self.build:  # an old page after an upgrade
            raise web.HTTPFound(f"/web/static/{self.build}/{rel}")
        cache = "public, max-age=31536000, immutable"
        return web.FileResponse(path, headers={"Cache-Control": cache})

    # login ------------------------------------------------------------------------
    async def login(self, request: web.Request) -> web.Response:
        if not same_origin(request.headers, request.host):
            raise AccessDenied("a login from another site is refused")
        try:
            body = await request.json()
        except ValueError:
            raise UsageError("send the login as JSON: user, password, otp") from None
        if not isinstance(body, dict):
            raise UsageError("send the login as JSON: user, password, otp")
        name, password, otp = (
            str(body.get(k) or "")[:MAX_FIELD] for k in ("user", "password", "otp")
        )
        if not name or not password or not otp:
            raise UsageError("give your user name, password and one-time code")
        key = generate_private_key()
        addr = request.remote or ""
        issued = await self.server.auth.login(
            name, password, otp, public_key_to_openssh(key.public_key()), None, addr
        )
        session = self.web_session(request, name, (key, issued), float(issued.expires))
        await self._audit(request, name, "login", method="password+totp")
        response = web.json_response(self._me(session))
        self.set_session_cookie(response, session)
        return response

    def web_session(
        self, request: web.Request, user: str, issued: tuple[Any, Any], expires: float
    ) -> WebSession:
        """A new web session holding ``issued`` = (key, certificates) (password or SSO)."""
        key, certs = issued
        rotation = self.server.rotation
        host_ca_pem = (
            b"".join(rotation.cas.host.trusted_pems())
            if rotation is not None
            else self.server.auth.host_ca.x509_pem
        )
        identity = UserIdentity(key, certs.ssh_cert, certs.tls_cert.encode(), host_ca_pem)
        return self.sessions.create(user, identity, expires, request.remote or "")

    @staticmethod
    def set_session_cookie(response: web.StreamResponse, session: WebSession) -> None:
        response.set_cookie(
            COOKIE, session.id, httponly=True, secure=True, samesite="Strict", path="/"
        )

    async def logout(self, request: web.Request) -> web.Response:
        session = self._session(request, state_change=True)
        self.sessions.drop(session.id, "logged out")
        await self._audit(request, session.user, "logout")
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    def _me(self, session: WebSession) -> dict[str, Any]:
        return {
            "user": session.user,
            "csrf": session.csrf,
            "logins": list(session.identity.logins),
            "expires": session.expires,
            "idle_timeout": self.sessions.idle_timeout,
        }

    async def me(self, request: web.Request) -> web.Response:
        return web.json_response(self._me(self._session(request)))

    # fleet --------------------------------------------------------------------------
    async def _nodes(self) -> list[Node]:
        """Every node row, read from storage at most every NODES_EVERY seconds and shared
        by every request and live view (a 10,000-node read costs ~0.25 s); the live state
        (online, last seen, version) comes from the tunnel registry at each call."""
        now = time.monotonic()
        read = self._nodes_read
        if read is None or (now - self._nodes_at >= NODES_EVERY and read.done()):
            self._nodes_read = asyncio.ensure_future(self.server.storage.nodes.all())
            self._nodes_at = now
        assert self._nodes_read is not None
        return await asyncio.shield(self._nodes_read)

    async def _rows(self, session: WebSession) -> list[dict[str, Any]]:
        """``tsh ls``'s rows for the session's user: the same visibility rules."""
        user = await self.server.storage.users.get(session.user)
        if user is None:
            raise AuthError(f"user {session.user!r} no longer exists; ask an admin")
        self.server._refuse_if_locked(user.name)
        rules, _ = await self.server.auth.rules_for(user)
        rows = self.server.node_rows(rules, {}, await self._nodes())
        firmware = await self._firmware()
        for row in rows:
            row["firmware"] = firmware.get(row["id"])
        return rows

    async def _firmware(self) -> dict[str, dict[str, str]]:
        """Each node's firmware as its last installing roll-out left it (version, slot),
        read from storage at most every FIRMWARE_EVERY seconds."""
        now = time.monotonic()
        if now - self._firmware_at < FIRMWARE_EVERY:
            return self._firmware_cache
        self._firmware_at = now
        store = self.server.storage.firmware
        found: dict[str, dict[str, str]] = {}
        for rollout in sorted(await store.rollouts(), key=lambda r: r.created):
            for node in await store.nodes(rollout.id):
                if node.state == "installed":
                    said = node.detail  # the agent's "slot b"
                    slot = said.removeprefix("slot ") if said.startswith("slot ") else ""
                    found[node.node_id] = {"version": rollout.version, "slot": slot[:32]}
        self._firmware_cache = found
        return found

    async def nodes(self, request: web.Request) -> web.Response:
        session = self._session(request)
        query = fleet.parse_query(request.query)
        return web.json_response(fleet.run_query(await self._rows(session), query))

    async def node(self, request: web.Request) -> web.Response:
        session = self._session(request)
        name = request.match_info["name"][:256]
        row = next((r for r in await self._rows(session) if r["name"] == name), None)
        if row is None:
            raise AccessDenied(f"no node {name!r} that you may see")
        history: list[dict[str, Any]] = []
        with contextlib.suppress(AccessDenied):  # the audit trail needs admin rights
            result = await self._call(
                request,
                session,
                "admin.audit.search",
                {"node": row["id"], "order": "desc", "limit": 200},
            )
            history = [_printable(e) for e in result["events"] if e["type"] != "session.data"]
        return web.json_response({"node": row, "events": history})

    async def events(self, request: web.Request) -> web.StreamResponse:
        """Server-sent events: a node's online state as it changes (``event: node``)."""
        session = self._session(request)
        mine = sum(1 for c in session.closers if getattr(c, "kind", "") == "stream")
        if self.streams >= MAX_STREAMS or mine >= MAX_STREAMS_PER_SESSION:
            raise web.HTTPTooManyRequests(text="too many live views open: close a tab")
        response = web.StreamResponse(
            headers={
                "Content-Type": "text/event-stream",
                "Cache-Control": "no-store",
                **security_headers(),
            }
        )
        ended = asyncio.Event()

        def close(_reason: str) -> None:
            ended.set()

        close.kind = "stream"  # type: ignore[attr-defined]
        session.closers.append(close)
        self.streams += 1
        try:
            await response.prepare(request)
            seen: dict[str, bool] = {}
            while not ended.is_set():
                rows = await self._rows(session)
                for row in rows:
                    if seen.get(row["name"]) != row["online"]:
                        if row["name"] in seen:
                            data = json.dumps(
                                {
                                    "name": row["name"],
                                    "online": row["online"],
                                    "last_seen": row["last_seen"],
                                }
                            )
                            await response.write(f"event: node\ndata: {data}\n\n".encode())
                        seen[row["name"]] = row["online"]
                await response.write(b": tick\n\n")
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(ended.wait(), SSE_TICK)
                if self.sessions.get(session.id, touch=False) is None:
                    break
        except (ConnectionError, RemotelerError):
            pass
        finally:
            self.streams -= 1
            with contextlib.suppress(ValueError):
                session.closers.remove(close)
        return response

    # terminal -----------------------------------------------------------------------
    async def terminal(self, request: web.Request) -> web.StreamResponse:
        session = self._session(request, state_change=True)  # csrf in the query
        node = request.query.get("node", "")[:256]
        login = request.query.get("login", "")[:64]
        if not node or not login:
            raise UsageError("open a terminal with a node and a login")
        open_terms = sum(1 for c in session.closers if getattr(c, "kind", "") == "terminal")
        if open_terms >= MAX_TERMINALS_PER_SESSION or self.streams >= MAX_STREAMS:
            raise web.HTTPTooManyRequests(text="too many terminals open: close one")
        try:
            size = clamp_size(
                int(request.query.get("cols", "80")), int(request.query.get("rows", "24"))
            )
        except ValueError:
            size = (80, 24)
        serial = None
        if port := request.query.get("serial", "")[:64]:
            try:
                serial = (port, parse_baud(request.query.get("baud", "115200")))
            except ValueError as exc:
                raise UsageError(str(exc)) from None
        ws = web.WebSocketResponse(max_msg_size=MAX_MESSAGE, heartbeat=30.0)
        await ws.prepare(request)

        def close(reason: str) -> None:
            async def bye() -> None:
                with contextlib.suppress(Exception):
                    await ws.send_str(
                        json.dumps({"type": "exit", "status": None, "message": reason})
                    )
                    await ws.close()

            self._tasks.add(task := asyncio.ensure_future(bye()))
            task.add_done_callback(self._tasks.discard)

        close.kind = "terminal"  # type: ignore[attr-defined]
        session.closers.append(close)
        self.streams += 1
        await self._audit(
            request, session.user, "terminal.open", target=node, login=login, serial=port
        )
        try:
            outcome = await run_terminal(
                ws, self.hub_addr(), session.identity, login, node, size, serial=serial
            )
        finally:
            self.streams -= 1
            with contextlib.suppress(ValueError):
                session.closers.remove(close)
            with contextlib.suppress(Exception):
                await ws.close()
        await self._audit(
            request, session.user, "terminal.close", target=node, outcome=outcome[:200]
        )
        return ws

    # audit --------------------------------------------------------------------------
    async def audit_export(self, request: web.Request) -> web.StreamResponse:
        """The search's events as JSON lines (``tctl audit search --format json``)."""
        session = self._session(request)
        events = await self._search(request, session)
        lines = "".join(json.dumps(_printable(e), separators=(",", ":")) + "\n" for e in events)
        await self._audit(request, session.user, "audit.export", count=len(events))
        return web.Response(
            text=lines,
            content_type="application/x-ndjson",
            headers={"Content-Disposition": 'attachment; filename="audit.jsonl"'},
        )

    async def _search(self, request: web.Request, session: WebSession) -> list[dict[str, Any]]:
        params: dict[str, Any] = {}
        for key in ("type", "user", "node", "session_id", "order"):
            value = request.query.get(key, "").strip()
            if value:
                params[key] = value[:256]
        for key in ("since", "until"):
            value = request.query.get(key, "").strip()
            if value:
                params[key] = _when(value, key)
        params["limit"] = _limit(request.query.get("limit", "200"))
        result = await self._call(request, session, "admin.audit.search", params)
        events: list[dict[str, Any]] = result["events"]
        names = result.get("names") or {}
        for event in events:
            event["node_name"] = names.get(event["node"], event["node"])
        return events

    async def audit_search(self, request: web.Request) -> web.Response:
        """``tctl audit search``'s filters: type, user, node, session_id, since, until
        (epoch seconds or ISO dates), limit; newest first unless order=asc."""
        session = self._session(request)
        events = await self._search(request, session)
        return web.json_response({"events": [_printable(e) for e in events]})

    async def recording(self, request: web.Request) -> web.Response:
        """A session's output frames for playback: ``[[ms, base64], ...]``. Admins see any
        session (``admin.audit.search``); others their own (``audit.session``)."""
        import base64

        from tsh.play import session_frames

        session = self._session(request)
        sid = request.match_info["sid"][:128]
        try:
            result = await self._call(
                request, session, "admin.audit.search", {"session_id": sid, "limit": 100_000}
            )
            events = result["events"]
        except AccessDenied:
            events = await self._call(request, session, "audit.session", {"session_id": sid})
        if not events:
            raise AccessDenied(f"no recorded session {sid!r} that you may see")
        frames = [[ms, base64.b64encode(data).decode()] for ms, data in session_frames(events)]
        start = next((e for e in events if e["type"] == "session.start"), events[0])
        return web.json_response(
            {
                "session": start.get("session") or sid,
                "user": start["user"],
                "login": start["login"],
                "node": start["node"],
                "time": start["time"],
                # on the device's own listener (--local-listen): recorded while offline
                "offline": (start.get("fields") or {}).get("via") == "local",
                "frames": frames,
                "events": [_printable(e) for e in events if e["type"] != "session.data"],
            }
        )

    # the RPC gateway ------------------------------------------------------------------
    async def _call(
        self, request: web.Request, session: WebSession, method: str, params: dict[str, Any]
    ) -> Any:
        from hub.api.server import _RPC_PEER

        handler = self.server.methods.get(method)
        if handler is None:
            raise UsageError(f"no method {method!r}")
        token = _RPC_PEER.set(request.remote or "")
        try:
            return await handler(Identity("user", session.user), {**params, "os_user": "web"})
        finally:
            _RPC_PEER.reset(token)

    async def call(self, request: web.Request) -> web.Response:
        method = request.match_info["method"]
        write = method in WRITE_METHODS
        if not write and method not in READ_METHODS:
            raise UsageError(f"the web console does not call {method[:64]!r}")
        session = self._session(request, state_change=True)
        try:
            params = await request.json() if request.can_read_body else {}
        except ValueError:
            raise UsageError("send the parameters as a JSON object") from None
        if not isinstance(params, dict):
            raise UsageError("send the parameters as a JSON object")
        try:
            result = await self._call(request, session, method, params)
        except RemotelerError as exc:
            if write:
                await self._audit(request, session.user, method, ok=False, error=exc.message[:200])
            raise
        if write:
            await self._audit(request, session.user, method, ok=True)
        return web.json_response({"result": result})
