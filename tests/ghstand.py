"""A local stand-in for GitHub: the OAuth app web flow and the two REST calls the hub's
GitHub connector makes (hub/sso/github.py).

It is a stand-in because GitHub (github.com or a GitHub Enterprise Server) cannot be
reached from where the tests run: they talk to 127.0.0.1 only, and a real login would
need a real account and a person at the browser. It serves, over real HTTP (or HTTPS
with ``ssl=``), the shapes GitHub's docs give:

* "Authorizing OAuth apps", web application flow: ``GET /login/oauth/authorize`` with
  ``client_id``, ``redirect_uri``, ``scope``, ``state``, ``code_challenge`` and
  ``code_challenge_method=S256`` (GitHub takes S256 only) shows an "Authorize" page; its
  form posts back to the same path and the browser is redirected to ``redirect_uri``
  with ``code`` and ``state``, or with ``error=access_denied`` when the user cancels.
  A ``redirect_uri`` other than the registered callback redirects to the callback with
  ``error=redirect_uri_mismatch`` ("Troubleshooting authorization request errors").
  The page's ``login`` field chooses the user (GitHub would use the browser's session).
* ``POST /login/oauth/access_token`` (form or JSON): ``{access_token, token_type,
  scope}`` in JSON when ``Accept`` asks for it, else form-encoded; codes are single use
  and expire in 10 minutes. Errors are HTTP 200 with ``error``, ``error_description``,
  ``error_uri`` as in "Troubleshooting OAuth app access token request errors":
  ``incorrect_client_credentials``, ``redirect_uri_mismatch``, ``bad_verification_code``.
  GitHub's docs do not say which error a wrong PKCE ``code_verifier`` gets; the
  stand-in answers ``bad_verification_code`` (the code "doesn't match").
* REST "Get the authenticated user" (``GET /user``) and "List teams for the
  authenticated user" (``GET /user/teams``, ``per_page`` up to 100, default 30,
  ``page``; ``Link`` with ``rel="next"``, ``"last"``, ``"first"``, ``"prev"`` as in "Using
  pagination in the REST API"), served under ``/api/v3`` as GitHub Enterprise Server
  does and at the root as api.github.com does. ``Authorization: Bearer`` or ``token``;
  ``401 {"message": "Bad credentials"}`` otherwise; ``X-GitHub-Api-Version`` other than
  2022-11-28 gets 400; the teams need a ``read:org``, ``user`` or ``repo`` scope (403).

Use it on the test's event loop; it listens on 127.0.0.1 only and is stopped on exit::

    users = {"alice": {"id": 101, "email": "a@example.com", "teams": ["acme/admins"]}}
    async with GitHubStandIn(users) as gh:
        gh.url, gh.client_id, gh.client_secret   # for the connector
        gh.api_requests                          # (path, headers) of each REST call

Knobs for hostile-peer tests: ``max_per_page`` (pages smaller than GitHub's 100),
``stall`` (seconds each REST answer waits), ``huge_user`` (a /user body of 2 MiB, with a
Content-Length when "sized", streamed without one when "chunked").
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import html
import json
import secrets
import ssl
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode

from aiohttp import web

__all__ = ["GitHubStandIn"]

API_VERSION = "2022-11-28"
CODE_TTL = 600.0  # GitHub: "codes expire after 10 minutes"
TEAM_SCOPES = {"read:org", "write:org", "admin:org", "user", "repo"}
TROUBLESHOOT = "/apps/managing-oauth-apps/troubleshooting-oauth-app-access-token-request-errors"
AUTH_ERRORS = "/apps/managing-oauth-apps/troubleshooting-authorization-request-errors"


@dataclass
class _Grant:
    client_id: str
    redirect_uri: str
    scopes: list[str]
    challenge: str
    login: str
    expires: float


class GitHubStandIn:
    """A GitHub for tests; ``users`` maps each login to ``{"id": int, "email": str |
    None, "name": str, "teams": ["org/team-slug", ...]}``."""

    def __init__(
        self,
        users: Mapping[str, Mapping[str, Any]],
        *,
        client_id: str = "Ov23liStandIn0001",
        client_secret: str = "standin-secret-0123456789abcdef",
        callback_url: str | None = None,
        max_per_page: int = 100,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.users = {login: dict(user) for login, user in users.items()}
        self.client_id = client_id
        self.client_secret = client_secret
        #: the OAuth app's registered callback; None: any redirect_uri is taken
        self.callback_url = callback_url
        self.max_per_page = max_per_page
        self.stall = 0.0
        self.huge_user = ""
        #: (path with query, headers) of each REST request, in order
        self.api_requests: list[tuple[str, dict[str, str]]] = []
        #: every access token issued (tests check none leaks into a message or log)
        self.tokens: dict[str, tuple[str, list[str]]] = {}
        self._grants: dict[str, _Grant] = {}
        self._ssl = ssl_context
        self._runner: web.AppRunner | None = None
        self.url = ""

    @property
    def api_url(self) -> str:
        return f"{self.url}/api/v3"

    async def __aenter__(self) -> GitHubStandIn:
        app = web.Application()
        app.router.add_get("/login/oauth/authorize", self._authorize_page)
        app.router.add_post("/login/oauth/authorize", self._authorize)
        app.router.add_post("/login/oauth/access_token", self._access_token)
        for prefix in ("/api/v3", ""):
            app.router.add_get(f"{prefix}/user", self._user)
            app.router.add_get(f"{prefix}/user/teams", self._teams)
        self._runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0, ssl_context=self._ssl)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"{'https' if self._ssl else 'http'}://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    # --- the browser's side -------------------------------------------------------------

    def _check_authorize(self, q: Mapping[str, str]) -> web.Response | None:
        if q.get("client_id") != self.client_id:
            return web.Response(status=404, text="Not Found")  # GitHub's page for an unknown app
        method = q.get("code_challenge_method", "")
        challenge = q.get("code_challenge", "")
        if (method or challenge) and (method != "S256" or len(challenge) != 43):
            return web.Response(status=400, text="code_challenge must be 43 characters, S256")
        redirect_uri = q.get("redirect_uri") or self.callback_url
        if not redirect_uri:
            return web.Response(status=400, text="no redirect_uri and no registered callback")
        if self.callback_url is not None and redirect_uri != self.callback_url:
            raise web.HTTPFound(
                _with_query(
                    self.callback_url,
                    error="redirect_uri_mismatch",
                    error_description="The redirect_uri MUST match the registered callback "
                    "URL for this application.",
                    error_uri=f"{AUTH_ERRORS}/#redirect-uri-mismatch",
                    state=q.get("state", ""),
                )
            )
        return None

    async def _authorize_page(self, request: web.Request) -> web.Response:
        q = request.query
        refused = self._check_authorize(q)
        if refused is not None:
            return refused
        keep = ("client_id", "redirect_uri", "scope", "state")
        hidden = "".join(
            f'<input type="hidden" name="{k}" value="{html.escape(q.get(k, ""))}">'
            for k in (*keep, "code_challenge", "code_challenge_method")
        )
        first = html.escape(next(iter(self.users), ""))
        page = (
            "<!doctype html><title>Authorize application</title>"
            '<form method="post" action="/login/oauth/authorize">'
            f'{hidden}<label>Sign in as <input name="login" value="{first}"></label>'
            '<button name="authorize" value="1">Authorize</button>'
            '<button name="cancel" value="1">Cancel</button></form>'
        )
        return web.Response(text=page, content_type="text/html")

    async def _authorize(self, request: web.Request) -> web.Response:
        form = {k: str(v) for k, v in (await request.post()).items()}
        refused = self._check_authorize(form)
        if refused is not None:
            return refused
        redirect_uri = form.get("redirect_uri") or str(self.callback_url)
        if "cancel" in form:
            raise web.HTTPFound(
                _with_query(
                    redirect_uri,
                    error="access_denied",
                    error_description="The user has denied your application access.",
                    error_uri=f"{AUTH_ERRORS}/#access-denied",
                    state=form.get("state", ""),
                )
            )
        login = form.get("login", "")
        if login not in self.users:
            return web.Response(status=403, text="Incorrect username or password.")
        code = secrets.token_hex(10)  # GitHub's codes are 20 hex characters
        self._grants[code] = _Grant(
            client_id=form["client_id"],
            redirect_uri=redirect_uri,
            scopes=[s for s in form.get("scope", "").replace(",", " ").split() if s],
            challenge=form.get("code_challenge", ""),
            login=login,
            expires=time.monotonic() + CODE_TTL,
        )
        raise web.HTTPFound(_with_query(redirect_uri, code=code, state=form.get("state", "")))

    # --- the app's side -----------------------------------------------------------------

    async def _access_token(self, request: web.Request) -> web.Response:
        if request.content_type == "application/json":
            raw = await request.json()
            form = {str(k): str(v) for k, v in raw.items()} if isinstance(raw, dict) else {}
        else:
            form = {k: str(v) for k, v in (await request.post()).items()}
        as_json = "json" in request.headers.get("Accept", "")
        if form.get("client_id") != self.client_id or not hmac.compare_digest(
            form.get("client_secret", "").encode(), self.client_secret.encode()
        ):
            return _token_error(
                as_json,
                "incorrect_client_credentials",
                "The client_id and/or client_secret passed are incorrect.",
                "#incorrect-client-credentials",
            )
        grant = self._grants.pop(form.get("code", ""), None)  # single use, right or wrong
        if grant is None or grant.client_id != self.client_id or grant.expires < time.monotonic():
            return _token_error(
                as_json,
                "bad_verification_code",
                "The code passed is incorrect or expired.",
                "#bad-verification-code",
            )
        if form.get("redirect_uri", grant.redirect_uri) != grant.redirect_uri:
            return _token_error(
                as_json,
                "redirect_uri_mismatch",
                "The redirect_uri MUST match the registered callback URL for this application.",
                "#redirect-uri-mismatch2",
            )
        if grant.challenge and not hmac.compare_digest(
            _s256(form.get("code_verifier", "")), grant.challenge
        ):
            return _token_error(
                as_json,
                "bad_verification_code",
                "The code_verifier does not match the code_challenge.",
                "#bad-verification-code",
            )
        token = "gho_" + secrets.token_urlsafe(27)
        self.tokens[token] = (grant.login, grant.scopes)
        answer = {"access_token": token, "token_type": "bearer", "scope": ",".join(grant.scopes)}
        return _token_reply(as_json, answer)

    async def _api(self, request: web.Request) -> tuple[str, list[str]] | web.Response:
        self.api_requests.append((request.path_qs, dict(request.headers)))
        if self.stall:
            await asyncio.sleep(self.stall)
        version = request.headers.get("X-GitHub-Api-Version", API_VERSION)
        if version != API_VERSION:
            return _api_error(400, f"Unsupported 'X-GitHub-Api-Version' header: {version[:40]}")
        scheme, _, token = request.headers.get("Authorization", "").partition(" ")
        holder = self.tokens.get(token) if scheme.lower() in ("bearer", "token") else None
        if holder is None:
            return _api_error(401, "Bad credentials")
        return holder

    async def _user(self, request: web.Request) -> web.StreamResponse:
        holder = await self._api(request)
        if isinstance(holder, web.Response):
            return holder
        login, scopes = holder
        user = self.users[login]
        body: dict[str, Any] = {
            "login": login,
            "id": user["id"],
            "node_id": base64.b64encode(f"04:User{user['id']}".encode()).decode(),
            "avatar_url": f"https://avatars.example/u/{user['id']}",
            "html_url": f"{self.url}/{login}",
            "type": "User",
            "site_admin": False,
            "name": user.get("name"),
            "company": None,
            "email": user.get("email"),
            "bio": "x" * (2 << 20) if self.huge_user else None,
        }
        headers = {"X-OAuth-Scopes": ", ".join(scopes)}
        if self.huge_user != "chunked":
            return web.json_response(body, headers=headers)
        stream = web.StreamResponse(headers={**headers, "Content-Type": "application/json"})
        stream.enable_chunked_encoding()
        await stream.prepare(request)
        data = json.dumps(body).encode()
        for at in range(0, len(data), 64 << 10):
            await stream.write(data[at : at + (64 << 10)])
        await stream.write_eof()
        return stream

    async def _teams(self, request: web.Request) -> web.Response:
        holder = await self._api(request)
        if isinstance(holder, web.Response):
            return holder
        login, scopes = holder
        if not TEAM_SCOPES.intersection(scopes):
            return _api_error(403, "Resource not accessible by integration")
        try:
            per_page = min(int(request.query.get("per_page", "30")), 100, self.max_per_page)
            page = max(int(request.query.get("page", "1")), 1)
        except ValueError:
            return _api_error(400, "Invalid pagination parameters")
        teams = list(self.users[login].get("teams", []))
        last = max(1, -(-len(teams) // per_page))
        body = [self._team(name) for name in teams[(page - 1) * per_page : page * per_page]]
        base = f"{self.url}{request.path}"
        links = []
        if page < last:
            links += [(page + 1, "next"), (last, "last")]
        if page > 1:
            links += [(1, "first"), (page - 1, "prev")]
        headers = {"X-OAuth-Scopes": ", ".join(scopes)}
        if links:
            headers["Link"] = ", ".join(
                f'<{base}?{urlencode({"per_page": per_page, "page": n})}>; rel="{rel}"'
                for n, rel in links
            )
        return web.json_response(body, headers=headers)

    def _team(self, name: str) -> dict[str, Any]:
        org, _, slug = name.partition("/")
        org_id = int(hashlib.sha256(org.encode()).hexdigest()[:6], 16)
        team_id = int(hashlib.sha256(name.encode()).hexdigest()[:7], 16)
        return {
            "id": team_id,
            "node_id": base64.b64encode(f"04:Team{team_id}".encode()).decode(),
            "url": f"{self.api_url}/teams/{team_id}",
            "html_url": f"{self.url}/orgs/{org}/teams/{slug}",
            "name": slug.replace("-", " ").title(),
            "slug": slug,
            "description": "",
            "privacy": "closed",
            "notification_setting": "notifications_enabled",
            "permission": "pull",
            "members_url": f"{self.api_url}/teams/{team_id}/members{{/member}}",
            "repositories_url": f"{self.api_url}/teams/{team_id}/repos",
            "parent": None,
            "organization": {
                "login": org,
                "id": org_id,
                "node_id": base64.b64encode(f"04:Organization{org_id}".encode()).decode(),
                "url": f"{self.api_url}/orgs/{org}",
                "description": "",
            },
        }


def _s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _with_query(url: str, **params: str) -> str:
    return f"{url}{'&' if '?' in url else '?'}{urlencode(params)}"


def _token_reply(as_json: bool, answer: Mapping[str, str]) -> web.Response:
    if as_json:
        return web.json_response(dict(answer))
    return web.Response(text=urlencode(answer), content_type="application/x-www-form-urlencoded")


def _token_error(as_json: bool, error: str, description: str, anchor: str) -> web.Response:
    return _token_reply(
        as_json,
        {"error": error, "error_description": description, "error_uri": f"{TROUBLESHOOT}/{anchor}"},
    )


def _api_error(status: int, message: str) -> web.Response:
    body = {"message": message, "documentation_url": "https://docs.github.com/rest"}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
