"""The web side of SSO (hub/sso/flow.py): the provider list for the login page, the
browser's way out to the identity provider and back, and the pages it lands on.

* ``GET /web/api/sso/connectors``: name, kind and display name of each connector.
* ``GET /web/sso/login/{name}``: a web console login; the browser gets a one-login
  binding cookie (``__Host-remoteler-sso``, checked on return: a login started in one
  browser cannot be finished in another) and goes to the provider.
* ``GET /web/sso/start/{id}``: a ``tsh login --auth`` login; once, to the provider.
* ``GET /web/sso/callback`` (OIDC, GitHub) and ``POST /web/sso/acs`` (SAML): the
  provider's answer. tsh's logins end in a redirect to its loopback listener; web
  logins in a page that moves to the console by ``<meta refresh>``, a same-site
  navigation, so the new SameSite=Strict session cookie goes with it.
"""

from __future__ import annotations

import html
import secrets
from typing import Any, Protocol

from aiohttp import web

from hub.sso.flow import PENDING_TTL
from remoteler.errors import RemotelerError


class Console(Protocol):
    """What the routes use of the web console (hub/web/app.py)."""

    server: Any

    def web_session(
        self, request: web.Request, user: str, issued: tuple[Any, Any], expires: float
    ) -> Any: ...

    def set_session_cookie(self, response: web.StreamResponse, session: Any) -> None: ...

    async def _audit(self, request: web.Request, user: str, action: str, **fields: Any) -> None: ...


BINDING_COOKIE = "__Host-remoteler-sso"
MAX_FORM = 256 * 1024  # a SAML response with a signed assertion is a few KiB


def _page(status: int, title: str, body: str, refresh: str = "") -> web.Response:
    meta = f'<meta http-equiv="refresh" content="0;url={html.escape(refresh)}">' if refresh else ""
    text = (
        f"<!doctype html><html><head><meta charset=utf-8>{meta}<title>{html.escape(title)}"
        f"</title></head><body><h1>{html.escape(title)}</h1><p>{body}</p></body></html>"
    )
    return web.Response(status=status, text=text, content_type="text/html")


class SSORoutes:
    def __init__(self, console: Console) -> None:
        self.console = console

    @property
    def sso(self) -> Any:
        sso = self.console.server.sso
        if sso is None:
            raise web.HTTPNotFound()
        return sso

    def add(self, router: web.UrlDispatcher) -> None:
        router.add_get("/web/api/sso/connectors", self.connectors)
        router.add_get("/web/sso/login/{name}", self.web_login)
        router.add_get("/web/sso/start/{id}", self.tsh_start)
        router.add_get("/web/sso/callback", self.callback)
        router.add_post("/web/sso/acs", self.acs)

    async def connectors(self, request: web.Request) -> web.Response:
        sso = self.console.server.sso
        items = await sso.listing() if sso is not None else []
        default = await sso.default() if sso is not None else None
        return web.json_response({"connectors": items, "default": default})

    async def web_login(self, request: web.Request) -> web.StreamResponse:
        binding = secrets.token_urlsafe(32)
        try:
            _, url = await self.sso.start(
                request.match_info["name"],
                mode="web",
                remote_addr=request.remote or "",
                binding=binding,
            )
        except RemotelerError as exc:
            return _page(400, "Login failed", html.escape(exc.message) + _back())
        response = web.HTTPFound(url)
        response.set_cookie(
            BINDING_COOKIE,
            binding,
            httponly=True,
            secure=True,
            samesite="None",  # it must come back with the provider's POST (SAML)
            path="/",
            max_age=int(PENDING_TTL),
        )
        return response

    async def tsh_start(self, request: web.Request) -> web.StreamResponse:
        try:
            url = await self.sso.open_start(request.match_info["id"])
        except RemotelerError as exc:
            return _page(400, "Login failed", html.escape(exc.message))
        raise web.HTTPFound(url)

    async def callback(self, request: web.Request) -> web.StreamResponse:
        return await self._finish(request, dict(request.query))

    async def acs(self, request: web.Request) -> web.StreamResponse:
        if request.content_length is not None and request.content_length > MAX_FORM:
            return _page(413, "Login failed", "the identity provider's answer is too large")
        form = await request.post()
        return await self._finish(request, {k: str(v) for k, v in form.items()})

    async def _finish(self, request: web.Request, params: dict[str, str]) -> web.StreamResponse:
        sso = self.sso
        addr = request.remote or ""
        record = None
        try:
            record = await sso.pending(params)
            done = await sso.finish(record, params, request.cookies.get(BINDING_COOKIE, ""), addr)
        except RemotelerError as exc:
            back = await sso.refused(record, exc.message, addr, getattr(exc, "log_reason", None))
            if back is not None:  # tsh prints the reason and ends
                raise web.HTTPFound(back) from None
            return _page(403, "Login refused", html.escape(exc.message) + _back())
        if done.mode == "tsh":
            raise web.HTTPFound(done.redirect)
        session = self.console.web_session(request, done.user, done.identity, done.expires)
        await self.console._audit(request, done.user, "login", method=f"sso:{done.connector}")
        response = _page(
            200, "Logged in", 'Opening <a href="/web/">the console</a>...', refresh="/web/"
        )
        self.console.set_session_cookie(response, session)
        response.del_cookie(BINDING_COOKIE, path="/")
        return response


def _back() -> str:
    return ' <a href="/web/">Back to the login page</a>'
