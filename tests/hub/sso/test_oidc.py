"""The OIDC provider's checks of discovery and ID tokens (hub/sso/oidc.py).

The real OpenID Provider (tests/e2e/test_sso_oidc.py) only signs good tokens; the bad
ones here come from a small issuer of the test's own on 127.0.0.1 (aiohttp), which
serves discovery, a JWKS and a token endpoint that answers what the test set: tokens
signed by keys it holds, with claims it chose, including rotated keys."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest
from aiohttp import web
from joserfc import jwt
from joserfc.jwk import ECKey, OctKey, RSAKey

from hub.sso.oidc import OIDCProvider, parse_oidc
from hub.sso.provider import Pending, SSOError

CALLBACK = "https://hub.example.com/web/sso/callback"


class Issuer:
    def __init__(self) -> None:
        self.url = ""
        self.keys = [RSAKey.generate_key(2048, parameters={"kid": "k1", "use": "sig"})]
        self.answer: dict[str, Any] = {}
        self.discovery: dict[str, Any] = {}
        self.jwks_fetches = 0
        self.userinfo: dict[str, Any] = {}
        self.forms: list[dict[str, str]] = []

    def token(self, claims: dict[str, Any], key: Any = None, alg: str = "RS256") -> str:
        now = int(time.time())
        base = {"iss": self.url, "aud": "remoteler", "sub": "u1", "iat": now, "exp": now + 300}
        base["preferred_username"] = "alice"
        payload = {k: v for k, v in {**base, **claims}.items() if v is not None}
        return jwt.encode(
            {"alg": alg, "kid": (key or self.keys[0]).kid}, payload, key or self.keys[0]
        )

    async def app(self) -> web.Application:
        async def discovery(request: web.Request) -> web.Response:
            doc = {
                "issuer": self.url,
                "authorization_endpoint": f"{self.url}/auth",
                "token_endpoint": f"{self.url}/token",
                "jwks_uri": f"{self.url}/jwks",
                "userinfo_endpoint": f"{self.url}/me",
                "id_token_signing_alg_values_supported": ["RS256", "ES256", "HS256", "none"],
            }
            return web.json_response({**doc, **self.discovery})

        async def jwks(request: web.Request) -> web.StreamResponse:
            self.jwks_fetches += 1
            body = json.dumps({"keys": [k.as_dict(private=False) for k in self.keys]}).encode()
            # in two writes with a pause, as a big JWKS over TLS arrives: read it all
            response = web.StreamResponse(headers={"Content-Type": "application/json"})
            await response.prepare(request)
            await response.write(body[: len(body) // 2])
            await asyncio.sleep(0.05)
            await response.write(body[len(body) // 2 :])
            await response.write_eof()
            return response

        async def token(request: web.Request) -> web.Response:
            self.forms.append(dict(await request.post()))
            return web.json_response({"access_token": "at", "token_type": "Bearer", **self.answer})

        async def me(request: web.Request) -> web.Response:
            return web.json_response(self.userinfo or {"sub": "u1"})

        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", discovery)
        app.router.add_get("/jwks", jwks)
        app.router.add_post("/token", token)
        app.router.add_get("/me", me)
        return app


@pytest.fixture
async def issuer() -> AsyncIterator[Issuer]:
    iss = Issuer()
    runner = web.AppRunner(await iss.app(), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    iss.url = f"http://127.0.0.1:{port}"
    try:
        yield iss
    finally:
        await runner.cleanup()


def _provider(issuer: Issuer, **spec: Any) -> OIDCProvider:
    doc = {"issuer_url": issuer.url, "client_id": "remoteler", **spec}
    return OIDCProvider("corp", parse_oidc(doc), "secret")


PENDING = Pending(state="st", nonce="n1", code_verifier="v" * 50)


async def _finish(issuer: Issuer, id_token: str, provider: OIDCProvider | None = None) -> Any:
    issuer.answer = {"id_token": id_token}
    p = provider or _provider(issuer)
    return await p.finish(PENDING, {"state": "st", "code": "c1"}, CALLBACK)


async def test_a_good_token_gives_the_user_and_userinfo_claims(issuer: Issuer) -> None:
    issuer.userinfo = {"sub": "u1", "groups": ["ops"], "preferred_username": "from-userinfo"}
    ident = await _finish(issuer, issuer.token({"nonce": "n1", "preferred_username": "alice"}))
    assert ident.username == "alice"  # the signed ID token wins over userinfo
    assert ident.claims["groups"] == ("ops",)
    assert ident.subject == "u1"
    form = issuer.forms[-1]
    assert form["code_verifier"] == PENDING.code_verifier and form["redirect_uri"] == CALLBACK


async def test_begin_sends_pkce_state_and_nonce(issuer: Issuer) -> None:
    url = (await _provider(issuer).begin(PENDING, CALLBACK)).url
    assert url.startswith(f"{issuer.url}/auth?")
    for part in ("code_challenge_method=S256", "state=st", "nonce=n1", "scope=openid+email"):
        assert part in url
    assert "v" * 50 not in url  # the verifier stays at the hub


@pytest.mark.parametrize(
    ("claims", "message"),
    [
        ({"nonce": "other"}, "nonce"),
        ({"nonce": "n1", "aud": "someone-else"}, "another client"),
        ({"nonce": "n1", "aud": ["remoteler", "x"], "azp": "x"}, "authorized party"),
        ({"nonce": "n1", "iss": "https://evil.example.com"}, "iss"),
        ({"nonce": "n1", "exp": int(time.time()) - 3600}, "expired"),
        ({"nonce": "n1", "iat": int(time.time()) + 3600}, "future"),
        ({"nonce": "n1", "iat": None}, "iat"),
    ],
)
async def test_bad_claims_are_refused(issuer: Issuer, claims: dict[str, Any], message: str) -> None:
    with pytest.raises(SSOError, match=message):
        await _finish(issuer, issuer.token(claims))


async def test_a_token_signed_by_a_key_not_in_the_jwks_is_refused(issuer: Issuer) -> None:
    stranger = RSAKey.generate_key(2048, parameters={"kid": "k1"})  # same kid, other key
    with pytest.raises(SSOError, match="signature is not valid"):
        await _finish(issuer, issuer.token({"nonce": "n1"}, key=stranger))


@pytest.mark.parametrize("alg", ["none", "HS256"])
async def test_none_and_hmac_are_never_accepted(issuer: Issuer, alg: str) -> None:
    if alg == "none":
        head = "eyJhbGciOiJub25lIn0"  # {"alg":"none"}
        forged = head + "." + issuer.token({"nonce": "n1"}).split(".")[1] + "."
    else:  # the client secret as an HMAC key: a confused-deputy classic
        forged = issuer.token(
            {"nonce": "n1"}, key=OctKey.import_key("secret" * 4, {"kid": "k1"}), alg="HS256"
        )
    with pytest.raises(SSOError, match="algorithm"):
        await _finish(issuer, forged)


async def test_a_rotated_key_is_fetched_once_it_is_named(issuer: Issuer) -> None:
    provider = _provider(issuer)
    await _finish(issuer, issuer.token({"nonce": "n1"}), provider)
    assert issuer.jwks_fetches == 1
    new = ECKey.generate_key("P-256", parameters={"kid": "k2", "use": "sig"})
    issuer.keys.append(new)
    provider._jwks_at -= 60  # the refetch limit (30 s) has passed
    await _finish(issuer, issuer.token({"nonce": "n1"}, key=new, alg="ES256"), provider)
    assert issuer.jwks_fetches == 2
    # an unknown kid within 30 s of the last fetch: no new fetch, refused
    ghost = ECKey.generate_key("P-256", parameters={"kid": "k3"})
    with pytest.raises(SSOError, match="signature is not valid"):
        await _finish(issuer, issuer.token({"nonce": "n1"}, key=ghost, alg="ES256"), provider)
    assert issuer.jwks_fetches == 2


async def test_discovery_must_name_the_configured_issuer(issuer: Issuer) -> None:
    issuer.discovery = {"issuer": "https://elsewhere.example.com"}
    with pytest.raises(SSOError, match="fix issuer_url"):
        await _provider(issuer).begin(PENDING, CALLBACK)


async def test_state_mismatch_error_param_and_userinfo_of_another_subject(issuer: Issuer) -> None:
    p = _provider(issuer)
    with pytest.raises(SSOError, match="state does not match"):
        await p.finish(PENDING, {"state": "other", "code": "c"}, CALLBACK)
    with pytest.raises(SSOError, match="refused the login: user said no"):
        await p.finish(
            PENDING,
            {"state": "st", "error": "access_denied", "error_description": "user said no"},
            CALLBACK,
        )
    issuer.userinfo = {"sub": "someone-else"}
    with pytest.raises(SSOError, match="another subject"):
        await _finish(issuer, issuer.token({"nonce": "n1"}), p)


async def test_a_header_that_is_not_an_object_is_malformed(issuer: Issuer) -> None:
    import base64

    head = base64.urlsafe_b64encode(b'"just a string"').rstrip(b"=").decode()
    forged = head + "." + issuer.token({"nonce": "n1"}).split(".", 1)[1]
    with pytest.raises(SSOError, match="malformed"):
        await _finish(issuer, forged)
