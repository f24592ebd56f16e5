"""GitHub and GitHub Enterprise Server sign-in: an OAuth app's web flow, teams as claims.

docs/sso-github.md is the operator's guide. The flow (hub/sso/flow.py) makes a
:class:`GitHubProvider` from a connector's spec (:func:`parse_github`) and its decrypted
client secret, and maps the ``teams`` claim to roles with :func:`teams_rules`.

Follows GitHub's docs: "Authorizing OAuth apps" (web application flow, PKCE with S256
only), "Troubleshooting OAuth app access token request errors", REST "Get the
authenticated user" (``GET /user``), "List teams for the authenticated user"
(``GET /user/teams``, needs the ``read:org``, ``user`` or ``repo`` scope) and "Using
pagination in the REST API" (``Link: <...>; rel="next"``). GitHub Enterprise Server
serves the same paths, the API under ``/api/v3``.

The parsing is plain functions (spec, callback, token answer, user, team pages, Link
header) that tests feed directly; :class:`GitHubProvider` only moves bytes. No message
or log line carries the client secret or an access token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import urlencode, urljoin, urlsplit

import aiohttp

from hub.sso.fetch import read_capped
from hub.sso.provider import Identity, Pending, Redirect, SSOError, pkce_challenge
from hub.sso.urls import is_loopback
from remoteler.errors import UsageError

__all__ = [
    "GITHUB_KEYS",
    "GitHubProvider",
    "GitHubUser",
    "next_link",
    "parse_github",
    "parse_teams",
    "parse_token",
    "parse_user",
    "pkce_challenge",
    "teams_rules",
]

log = logging.getLogger("remoteler.hub.sso.github")

GITHUB_KEYS: Final = frozenset(
    {"client_id", "endpoint_url", "api_endpoint_url", "teams_to_roles", "scopes"}
)
GITHUB_COM: Final = "https://github.com"
GITHUB_API: Final = "https://api.github.com"
#: REST API version asked for (``X-GitHub-Api-Version``); GitHub Enterprise Server has it
API_VERSION: Final = "2022-11-28"
USER_AGENT: Final = "remoteler-hub"
DEFAULT_SCOPES: Final = ("read:org",)
#: any one of these lets ``GET /user/teams`` list the user's teams (GitHub REST docs)
TEAM_SCOPES: Final = frozenset({"read:org", "write:org", "admin:org", "user", "repo"})
#: each request's deadline; a whole login gets three of them
TIMEOUT: Final = 10.0
#: the most of a response body read (after decompression)
MAX_BODY: Final = 1 << 20
TEAMS_PER_PAGE: Final = 100
MAX_TEAM_PAGES: Final = 10

_TEAM_KEYS = frozenset({"organization", "team", "roles"})
_CLIENT_ID = re.compile(r"[A-Za-z0-9._-]{1,128}")
# GitHub logins: letters, digits, single hyphens; Enterprise Server adds _ and .
_ORG = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.-]{0,99})")
_SLUG = re.compile(r"[A-Za-z0-9_.-]{1,255}")
_LOGIN = _ORG
_SCOPE = re.compile(r"[a-z][a-z_:]{0,63}")
_LINK = re.compile(r"<([^>]*)>((?:\s*;\s*[^;,]*)*)")
_LINK_PARAM = re.compile(r';\s*([A-Za-z-]+)\s*=\s*"?([^";,]*)"?')

SessionFactory = Callable[[], aiohttp.ClientSession]


# --- the connector's spec -------------------------------------------------------------


def _url(value: object, key: str) -> str:
    """``value`` as a base URL without a trailing slash, or UsageError naming ``key``."""
    hint = f"{key} must be an https:// URL such as https://ghe.example.com (http only on loopback)"
    if not isinstance(value, str) or len(value) > 2048:
        raise UsageError(hint)
    try:
        parts = urlsplit(value)
        host = parts.hostname or ""
        _ = parts.port  # ValueError for a bad port
    except ValueError:
        raise UsageError(f"{hint}; got {value[:100]!r}") from None
    scheme = parts.scheme.lower()
    if not host or parts.username is not None or parts.query or parts.fragment:
        raise UsageError(f"{hint}, without user, query or #fragment; got {value[:100]!r}")
    if scheme != "https" and not (scheme == "http" and is_loopback(host)):
        raise UsageError(f"{hint}; got {value[:100]!r}")
    return f"{scheme}://{parts.netloc}{parts.path.rstrip('/')}"


def _name(value: object, where: str, pattern: re.Pattern[str], hint: str) -> str:
    if not isinstance(value, str) or not value:
        raise UsageError(f"{where} must be a non-empty string ({hint})")
    if not pattern.fullmatch(value):
        raise UsageError(f"{where} must be {hint}; got {value[:100]!r}")
    return value


def _team_rule(entry: object, where: str) -> dict[str, Any]:
    if not isinstance(entry, Mapping):
        raise UsageError(f"{where} must be a table with organization, team and roles")
    unknown = sorted(set(entry) - _TEAM_KEYS)
    if unknown:
        raise UsageError(f"unknown key {unknown[0]!r} in {where}; use organization, team, roles")
    org = _name(
        entry.get("organization"),
        f"{where}.organization",
        _ORG,
        "the organization's login, as in github.com/ORG",
    )
    team = _name(
        entry.get("team"),
        f"{where}.team",
        _SLUG,
        "the team's slug, as in github.com/orgs/ORG/teams/SLUG",
    )
    roles = entry.get("roles")
    if (
        not isinstance(roles, list)
        or not roles
        or not all(isinstance(r, str) and r.strip() == r and r for r in roles)
    ):
        raise UsageError(f'{where}.roles must be a non-empty list of role names, e.g. ["access"]')
    return {"organization": org, "team": team, "roles": list(roles)}


def _scopes(value: object) -> list[str]:
    hint = 'scopes must be a list of GitHub OAuth scopes, e.g. ["read:org"]'
    if not isinstance(value, list | tuple) or not value:
        raise UsageError(hint)
    scopes: list[str] = []
    for scope in value:
        if not isinstance(scope, str) or not _SCOPE.fullmatch(scope):
            raise UsageError(f"{hint}; got {str(scope)[:100]!r}")
        if scope not in scopes:
            scopes.append(scope)
    if not TEAM_SCOPES.intersection(scopes):
        raise UsageError(
            "scopes must include read:org (or user, repo, write:org, admin:org): "
            "without it GitHub does not list the user's teams"
        )
    return scopes


def parse_github(doc: Mapping[str, Any]) -> dict[str, Any]:
    """Check a GitHub connector's own keys (:data:`GITHUB_KEYS`; the caller takes out
    ``kind``, ``name`` and ``client_secret`` first) and return its spec: JSON-able, every
    default filled in, and accepted again by this function unchanged."""
    unknown = sorted(set(doc) - GITHUB_KEYS)
    if unknown:
        raise UsageError(
            f"unknown key {unknown[0]!r} in the GitHub connector; "
            f"use {', '.join(sorted(GITHUB_KEYS))}"
        )
    client_id = _name(
        doc.get("client_id"),
        "client_id",
        _CLIENT_ID,
        "the OAuth app's Client ID from its settings page",
    )
    endpoint = _url(doc.get("endpoint_url", GITHUB_COM), "endpoint_url")
    if "api_endpoint_url" in doc:
        api = _url(doc["api_endpoint_url"], "api_endpoint_url")
    elif endpoint.lower() == GITHUB_COM:
        api = GITHUB_API
    else:
        api = f"{endpoint}/api/v3"  # GitHub Enterprise Server
    rules = doc.get("teams_to_roles")
    if not isinstance(rules, list) or not rules:
        raise UsageError(
            "teams_to_roles must list at least one "
            '{organization = "ORG", team = "SLUG", roles = ["ROLE"]}'
        )
    return {
        "client_id": client_id,
        "endpoint_url": endpoint,
        "api_endpoint_url": api,
        "teams_to_roles": [_team_rule(e, f"teams_to_roles[{i}]") for i, e in enumerate(rules)],
        "scopes": _scopes(doc.get("scopes", list(DEFAULT_SCOPES))),
    }


def teams_rules(spec: Mapping[str, Any]) -> list[tuple[str, str, list[str]]]:
    """``teams_to_roles`` as (claim, value, roles) for the flow's mapping: claim
    ``"teams"``, value ``"org/team-slug"`` in lower case, as the ``teams`` claim has it
    (GitHub's organization logins and team slugs are case-insensitive)."""
    return [
        ("teams", f"{r['organization']}/{r['team']}".lower(), list(r["roles"]))
        for r in spec["teams_to_roles"]
    ]


# --- GitHub's answers, parsed without I/O -------------------------------------------------


def _one_line(text: object, limit: int = 200) -> str:
    """Text from GitHub made safe for a one-line message: printable, collapsed, capped."""
    words = "".join(c if c.isprintable() else " " for c in str(text)[: limit * 4]).split()
    line = " ".join(words)
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _code_from_callback(pending: Pending, params: Mapping[str, str], callback_url: str) -> str:
    """The callback's ``code`` once its ``state`` is this login's (RFC 6749 §10.12)."""
    state = params.get("state", "")
    if not state or not hmac.compare_digest(state.encode(), pending.state.encode()):
        raise SSOError(
            "this GitHub login's state does not match (an old or forged link); sign in again"
        )
    error = params.get("error")
    if error is not None:
        raise _refusal(error, params.get("error_description"), callback_url)
    code = params.get("code", "")
    if not code or len(code) > 512 or not code.isascii() or not code.isprintable():
        raise SSOError("GitHub sent no login code back; sign in again")
    return code


def _refusal(error: object, description: object, callback_url: str) -> SSOError:
    """GitHub's ``error`` (authorize redirect or token answer) as one line."""
    code = _one_line(error, 60)
    text = _one_line(description) if description else code
    if code == "redirect_uri_mismatch":
        return SSOError(
            f"GitHub refused the callback URL ({text}); set the OAuth app's "
            f"Authorization callback URL to {callback_url}"
        )
    if code == "incorrect_client_credentials":
        return SSOError(
            f"GitHub refused the connector's client_id or client secret ({text}); "
            "update the connector with the OAuth app's Client ID and a current client secret"
        )
    if code == "bad_verification_code":
        return SSOError(f"GitHub refused the login code ({text}); sign in again")
    if code == "access_denied":
        return SSOError(f"GitHub login not authorized ({text}); sign in again and authorize")
    return SSOError(f"GitHub refused the login: {code}: {text}")


def parse_token(body: object, callback_url: str) -> str:
    """The access token from the token endpoint's JSON (GitHub answers errors with HTTP
    200 and an ``error`` field)."""
    if not isinstance(body, dict):
        raise SSOError("GitHub's token answer is not a JSON object; check endpoint_url")
    if body.get("error") is not None:
        raise _refusal(body["error"], body.get("error_description"), callback_url)
    token = body.get("access_token")
    if (
        not isinstance(token, str)
        or not 0 < len(token) <= 1024
        or not token.isascii()
        or not token.isprintable()
        or " " in token
    ):
        raise SSOError("GitHub's token answer has no usable access_token; check endpoint_url")
    token_type = body.get("token_type", "bearer")
    if not isinstance(token_type, str) or token_type.lower() != "bearer":
        raise SSOError(
            f"GitHub issued a {_one_line(token_type, 30)!r} token, not a bearer token; "
            "check endpoint_url"
        )
    return token


@dataclass(frozen=True)
class GitHubUser:
    """``GET /user``'s fields the hub uses."""

    #: the user's login (the hub's user name)
    login: str
    #: the account's numeric id, which survives a rename
    id: int
    #: the public e-mail address, when the user shows one
    email: str | None


def parse_user(body: object) -> GitHubUser:
    if not isinstance(body, dict):
        raise SSOError("GitHub's user answer is not a JSON object; check api_endpoint_url")
    login, uid, email = body.get("login"), body.get("id"), body.get("email")
    if not isinstance(login, str) or not _LOGIN.fullmatch(login):
        raise SSOError(f"GitHub's user answer has no valid login ({_one_line(login, 60)!r})")
    if not isinstance(uid, int) or isinstance(uid, bool) or uid < 0:
        raise SSOError("GitHub's user answer has no numeric id; check api_endpoint_url")
    shown = _one_line(email, 320) if isinstance(email, str) and len(email) <= 320 else ""
    return GitHubUser(login=login, id=uid, email=shown or None)


def parse_teams(body: object) -> list[tuple[str, str]]:
    """One page of ``GET /user/teams`` as (organization login, team slug), lower case."""
    if not isinstance(body, list):
        raise SSOError("GitHub's team list is not a JSON array; check api_endpoint_url")
    teams: list[tuple[str, str]] = []
    for team in body:
        org = team.get("organization") if isinstance(team, dict) else None
        slug = team.get("slug") if isinstance(team, dict) else None
        login = org.get("login") if isinstance(org, dict) else None
        if not isinstance(login, str) or not _ORG.fullmatch(login):
            raise SSOError("GitHub's team list has a team without an organization login")
        if not isinstance(slug, str) or not _SLUG.fullmatch(slug):
            raise SSOError("GitHub's team list has a team without a valid slug")
        teams.append((login.lower(), slug.lower()))
    return teams


def next_link(header: str | None, base: str, api: str) -> str | None:
    """The ``rel="next"`` URL of a ``Link`` header (RFC 8288), resolved against ``base``
    (the page's URL); None on the last page. A next page off the API's origin or path is
    refused: the access token goes with every page request."""
    if not header:
        return None
    for match in _LINK.finditer(header[:8192]):
        rels = {
            value.lower()
            for key, raw in _LINK_PARAM.findall(match.group(2))
            if key.lower() == "rel"
            for value in raw.split()
        }
        if "next" not in rels:
            continue
        url: str = urljoin(base, str(match.group(1)).strip())
        got, want = urlsplit(url), urlsplit(api)
        if (got.scheme, got.netloc.lower()) != (want.scheme, want.netloc.lower()) or not (
            got.path == want.path or got.path.startswith(want.path + "/")
        ):
            raise SSOError(
                f"GitHub's next page of teams is off {want.netloc}; check api_endpoint_url"
            )
        return url
    return None


def github_identity(user: GitHubUser, teams: list[tuple[str, str]]) -> Identity:
    """The :class:`Identity`: teams as ``org/slug``, organizations those teams are in."""
    names = list(dict.fromkeys(f"{org}/{slug}" for org, slug in teams))
    claims: dict[str, tuple[str, ...]] = {
        "login": (user.login,),
        "teams": tuple(names),
        "organizations": tuple(dict.fromkeys(org for org, _ in teams)),
    }
    if user.email:
        claims["email"] = (user.email,)
    return Identity(username=user.login, claims=claims, subject=str(user.id))


@dataclass(frozen=True)
class _Reply:
    status: int
    body: bytes
    #: the headers read: Link, X-RateLimit-Remaining
    link: str | None
    rate_left: str | None


def _json(body: bytes, what: str, key: str) -> object:
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError):
        raise SSOError(f"GitHub's {what} is not JSON; check {key}") from None


def _api_json(reply: _Reply, what: str, api: str) -> object:
    """A REST answer's JSON, or the one-line reason it has none."""
    if reply.status == 200:
        return _json(reply.body, what, "api_endpoint_url")
    if reply.status == 401:
        raise SSOError(f"GitHub refused the access token for the {what}; sign in again")
    if reply.status in (403, 429) and reply.rate_left == "0":
        raise SSOError("GitHub's API rate limit for this user is spent; try again within the hour")
    if reply.status == 403:
        try:
            doc = json.loads(reply.body)
        except (ValueError, UnicodeDecodeError):
            doc = None
        message = _one_line(doc.get("message", "")) if isinstance(doc, dict) else ""
        raise SSOError(
            f"GitHub refused the {what} (HTTP 403: {message or 'forbidden'}); check the "
            "connector's scopes and the organization's OAuth app policy"
        )
    if reply.status == 404 or 300 <= reply.status < 400:
        raise SSOError(
            f"GitHub has no {what} at {api} (HTTP {reply.status}); check api_endpoint_url"
        )
    raise SSOError(f"GitHub answered HTTP {reply.status} for the {what}; try again later")


# --- the provider: I/O only ------------------------------------------------------------


def default_session() -> aiohttp.ClientSession:
    """A session for one login (system CA store; each request also gets its deadline)."""
    return aiohttp.ClientSession(
        timeout=aiohttp.ClientTimeout(total=TIMEOUT), headers={"User-Agent": USER_AGENT}
    )


async def _read_capped(resp: aiohttp.ClientResponse, what: str) -> bytes:
    too_big = f"GitHub's {what} is larger than {MAX_BODY >> 20} MiB; check the connector's URLs"
    return await read_capped(resp, too_big, MAX_BODY)


class GitHubProvider:
    """One GitHub connector's logins (:class:`hub.sso.provider.Provider`).

    ``spec`` is :func:`parse_github`'s result; ``client_secret`` the OAuth app's secret,
    decrypted. ``session_factory`` makes the HTTP session of one :meth:`finish`, which
    closes it: give one with an ``ssl`` context for a GitHub Enterprise Server signed by
    a private CA. Each request has ``timeout`` seconds and a whole :meth:`finish` three
    times that; bodies are read up to :data:`MAX_BODY`.
    """

    def __init__(
        self,
        name: str,
        spec: Mapping[str, Any],
        client_secret: str,
        *,
        session_factory: SessionFactory = default_session,
        timeout: float = TIMEOUT,
    ) -> None:
        self.name = name
        self.spec = parse_github(spec)
        self._secret = client_secret
        self._session_factory = session_factory
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._deadline = 3 * timeout

    def __repr__(self) -> str:
        return f"GitHubProvider({self.name!r}, {self.spec['endpoint_url']!r})"

    async def begin(self, pending: Pending, callback_url: str) -> Redirect:
        query = {
            "client_id": self.spec["client_id"],
            "redirect_uri": callback_url,
            "scope": " ".join(self.spec["scopes"]),
            "state": pending.state,
            "code_challenge": pkce_challenge(pending.code_verifier),
            "code_challenge_method": "S256",
        }
        return Redirect(url=f"{self.spec['endpoint_url']}/login/oauth/authorize?{urlencode(query)}")

    async def finish(
        self, pending: Pending, params: Mapping[str, str], callback_url: str
    ) -> Identity:
        try:
            code = _code_from_callback(pending, params, callback_url)
            identity = await self._exchange(code, pending, callback_url)
        except SSOError as err:
            log.warning("github login refused: %s", err, extra={"connector": self.name})
            raise
        log.info(
            "github login",
            extra={
                "connector": self.name,
                "user": identity.username,
                "teams": len(identity.claims["teams"]),
            },
        )
        return identity

    async def _exchange(self, code: str, pending: Pending, callback_url: str) -> Identity:
        host = urlsplit(self.spec["endpoint_url"]).netloc
        try:
            async with asyncio.timeout(self._deadline), self._session_factory() as session:
                token = await self._token(session, code, pending, callback_url)
                reply = await self._get(session, f"{self._api}/user", token)
                user = parse_user(_api_json(reply, "user", self._api))
                teams = await self._teams(session, token)
        except TimeoutError:
            raise SSOError(f"GitHub at {host} did not answer in time; try again later") from None
        except aiohttp.ClientConnectorCertificateError as exc:
            reason = _one_line(getattr(exc.certificate_error, "verify_message", "") or "untrusted")
            raise SSOError(
                f"the TLS certificate of {exc.host} is not trusted ({reason}); check the "
                "connector's URLs, or trust its CA on the hub host"
            ) from None
        except aiohttp.ClientConnectorError as exc:
            reason = _one_line(exc.os_error.strerror or type(exc.os_error).__name__, 80)
            raise SSOError(
                f"cannot connect to GitHub at {exc.host}:{exc.port} ({reason}); check the "
                "connector's URLs and the hub's network"
            ) from None
        except aiohttp.ClientError as exc:
            raise SSOError(
                f"the connection to GitHub at {host} failed ({type(exc).__name__}); try again"
            ) from None
        return github_identity(user, teams)

    @property
    def _api(self) -> str:
        return str(self.spec["api_endpoint_url"])

    async def _token(
        self, session: aiohttp.ClientSession, code: str, pending: Pending, callback_url: str
    ) -> str:
        form = {
            "client_id": self.spec["client_id"],
            "client_secret": self._secret,
            "code": code,
            "redirect_uri": callback_url,
            "code_verifier": pending.code_verifier,
        }
        reply = await self._request(
            session,
            "POST",
            f"{self.spec['endpoint_url']}/login/oauth/access_token",
            {"Accept": "application/json", "User-Agent": USER_AGENT},
            "token answer",
            data=form,
        )
        if reply.status != 200:
            raise SSOError(
                f"GitHub answered HTTP {reply.status} to the token request; check endpoint_url"
            )
        return parse_token(_json(reply.body, "token answer", "endpoint_url"), callback_url)

    async def _teams(self, session: aiohttp.ClientSession, token: str) -> list[tuple[str, str]]:
        url = f"{self._api}/user/teams?per_page={TEAMS_PER_PAGE}"
        teams: list[tuple[str, str]] = []
        for _ in range(MAX_TEAM_PAGES):
            reply = await self._get(session, url, token)
            teams += parse_teams(_api_json(reply, "team list", self._api))
            following = next_link(reply.link, url, self._api)
            if following is None:
                return teams
            url = following
        raise SSOError(
            f"GitHub lists more than {MAX_TEAM_PAGES * TEAMS_PER_PAGE} teams for this user, "
            "more than the hub reads; leave unused teams or ask the hub's administrator"
        )

    async def _get(self, session: aiohttp.ClientSession, url: str, token: str) -> _Reply:
        headers = {
            "Authorization": f"Bearer {token}",
            "Accept": "application/vnd.github+json",
            "X-GitHub-Api-Version": API_VERSION,
            "User-Agent": USER_AGENT,
        }
        return await self._request(session, "GET", url, headers, "API answer")

    async def _request(
        self,
        session: aiohttp.ClientSession,
        method: str,
        url: str,
        headers: Mapping[str, str],
        what: str,
        data: Mapping[str, str] | None = None,
    ) -> _Reply:
        # No redirects: one could carry the token or secret to another host.
        async with session.request(
            method, url, headers=headers, data=data, allow_redirects=False, timeout=self._timeout
        ) as resp:
            body = await _read_capped(resp, what)
            return _Reply(
                status=resp.status,
                body=body,
                link=resp.headers.get("Link"),
                rate_left=resp.headers.get("X-RateLimit-Remaining"),
            )
