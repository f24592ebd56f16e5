"""OpenID Connect (authorization code flow with PKCE) against any certified provider.

The provider is found by discovery (``ISSUER/.well-known/openid-configuration``, whose
``issuer`` must be the configured one exactly). ``finish`` exchanges the code (with the
PKCE verifier; the client secret by HTTP Basic, or none for a public client), then
checks the ID token with joserfc: signature by a key of the provider's JWKS (fetched
again, at most every :data:`JWKS_REFETCH` s, when a token names a key it has not seen:
key rotation), an asymmetric algorithm the provider announces, ``iss``, ``aud``
(contains our client id; ``azp`` when there are several), ``exp``/``iat`` within
:data:`~hub.sso.provider.CLOCK_SKEW`, and ``nonce``. Claims from the userinfo endpoint
(same ``sub``) are added: providers put groups there.
"""

from __future__ import annotations

import hmac
import json
import time
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlencode

from hub.sso.fetch import Fetcher, HttpFetcher
from hub.sso.mapping import flatten_claims
from hub.sso.provider import (
    CLOCK_SKEW,
    Identity,
    Pending,
    Redirect,
    SSOError,
    pkce_challenge,
)
from hub.sso.urls import check_url
from remoteler import b64url
from remoteler.errors import UsageError

OIDC_KEYS = {"issuer_url", "client_id", "scopes", "claims_to_roles", "username_claim", "prompt"}
DEFAULT_SCOPES = ("openid", "email", "profile")
#: asymmetric signature algorithms accepted for ID tokens (never "none", never HMAC)
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "EdDSA")
DISCOVERY_TTL = 3600.0
JWKS_REFETCH = 30.0


def parse_oidc(doc: dict[str, Any]) -> dict[str, Any]:
    issuer = check_url(doc.get("issuer_url"), "issuer_url")
    client_id = doc.get("client_id")
    if not isinstance(client_id, str) or not client_id.strip():
        raise UsageError('client_id must be the id the identity provider gave, such as "remoteler"')
    scopes = doc.get("scopes", list(DEFAULT_SCOPES))
    if not isinstance(scopes, list) or not all(isinstance(s, str) and s for s in scopes):
        raise UsageError('scopes must be a list such as ["openid", "email", "groups"]')
    if "openid" not in scopes:
        scopes = ["openid", *scopes]
    username_claim = doc.get("username_claim", "preferred_username")
    if not isinstance(username_claim, str) or not username_claim:
        raise UsageError('username_claim must name a claim, such as "preferred_username"')
    spec: dict[str, Any] = {
        "issuer_url": issuer,
        "client_id": client_id.strip(),
        "scopes": scopes,
        "username_claim": username_claim,
    }
    prompt = doc.get("prompt")
    if prompt is not None:
        if prompt not in ("none", "login", "consent", "select_account"):
            raise UsageError("prompt must be one of none, login, consent, select_account")
        spec["prompt"] = prompt
    return spec


class OIDCProvider:
    def __init__(
        self,
        name: str,
        spec: Mapping[str, Any],
        client_secret: str | None,
        *,
        fetcher: Fetcher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.name = name
        self.spec = dict(spec)
        self._secret = client_secret
        self.fetcher = fetcher or HttpFetcher()
        self.clock = clock
        self._config: dict[str, Any] | None = None
        self._config_at = 0.0
        self._jwks: Any = None
        self._jwks_at = -JWKS_REFETCH

    def __repr__(self) -> str:
        return f"OIDCProvider({self.name!r})"

    # discovery ------------------------------------------------------------------
    async def config(self) -> dict[str, Any]:
        if self._config is not None and self.clock() - self._config_at < DISCOVERY_TTL:
            return self._config
        issuer = self.spec["issuer_url"]
        url = issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = await self.fetcher.get_json(url, what="the identity provider's discovery document")
        if doc.get("issuer") != issuer:
            raise SSOError(
                f"the identity provider says its issuer is {str(doc.get('issuer'))[:100]!r}, "
                f"not {issuer!r}: fix issuer_url in connector {self.name!r}"
            )
        endpoints = ["authorization_endpoint", "token_endpoint", "jwks_uri"]
        if doc.get("userinfo_endpoint") is not None:  # optional
            endpoints.append("userinfo_endpoint")
        for key in endpoints:
            try:
                check_url(doc.get(key), key)
            except UsageError as exc:
                raise SSOError(f"the identity provider's discovery document: {exc}") from None
        self._config, self._config_at = doc, self.clock()
        return doc

    async def _keys(self, kid: str | None) -> Any:
        from joserfc.jwk import KeySet

        config = await self.config()
        fresh = self._jwks is not None and (
            kid is None or any(k.kid == kid for k in self._jwks.keys)
        )
        if fresh:
            return self._jwks
        if self._jwks is not None and self.clock() - self._jwks_at < JWKS_REFETCH:
            return self._jwks  # a key we don't know: refetched at most every 30 s
        doc = await self.fetcher.get_json(config["jwks_uri"], what="the identity provider's keys")
        try:
            self._jwks = KeySet.import_key_set(doc)  # type: ignore[arg-type]
        except Exception:
            raise SSOError("the identity provider's key set (jwks_uri) is not valid") from None
        self._jwks_at = self.clock()
        return self._jwks

    # the flow -------------------------------------------------------------------
    async def begin(self, pending: Pending, callback_url: str) -> Redirect:
        config = await self.config()
        query = {
            "response_type": "code",
            "client_id": self.spec["client_id"],
            "redirect_uri": callback_url,
            "scope": " ".join(self.spec["scopes"]),
            "state": pending.state,
            "nonce": pending.nonce,
            "code_challenge": pkce_challenge(pending.code_verifier),
            "code_challenge_method": "S256",
        }
        if "prompt" in self.spec:
            query["prompt"] = self.spec["prompt"]
        endpoint = config["authorization_endpoint"]
        sep = "&" if "?" in endpoint else "?"
        return Redirect(endpoint + sep + urlencode(query))

    async def finish(
        self, pending: Pending, params: Mapping[str, str], callback_url: str
    ) -> Identity:
        if not hmac.compare_digest(params.get("state", "").encode(), pending.state.encode()):
            raise SSOError("the login's state does not match: start the login again")
        if "error" in params:
            said = params.get("error_description") or params["error"]
            raise SSOError(f"the identity provider refused the login: {said[:200]}")
        code = params.get("code", "")
        if not code:
            raise SSOError("the identity provider sent no authorization code: start again")
        config = await self.config()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": callback_url,
            "code_verifier": pending.code_verifier,
            "client_id": self.spec["client_id"],
        }
        tokens = await self.fetcher.post_form(
            config["token_endpoint"],
            form,
            basic=(self.spec["client_id"], self._secret) if self._secret else None,
            what="the identity provider's token endpoint",
        )
        id_token = tokens.get("id_token")
        if not isinstance(id_token, str):
            raise SSOError("the identity provider returned no ID token")
        claims = await self.verify_id_token(id_token, pending.nonce, config)
        access = tokens.get("access_token")
        userinfo_url = config.get("userinfo_endpoint")
        if isinstance(access, str) and userinfo_url:
            info = await self.fetcher.get_json(
                userinfo_url, bearer=access, what="the identity provider's userinfo endpoint"
            )
            if info.get("sub") != claims.get("sub"):
                raise SSOError("the identity provider's userinfo is for another subject")
            claims = {**info, **claims}  # the signed ID token wins
        flat = flatten_claims(claims)
        username = flat.get(self.spec["username_claim"], ("",))[0]
        if not username:
            raise SSOError(
                f"the identity provider sent no {self.spec['username_claim']!r} claim: set "
                f"username_claim in connector {self.name!r} to a claim it sends"
            )
        return Identity(username, flat, subject=str(claims.get("sub", "")))

    async def verify_id_token(
        self, id_token: str, nonce: str, config: Mapping[str, Any]
    ) -> dict[str, Any]:
        from joserfc import jwt
        from joserfc.errors import JoseError

        allowed = [
            a
            for a in config.get("id_token_signing_alg_values_supported", ["RS256"])
            if a in ALGORITHMS
        ]
        try:
            header = json.loads(b64url.decode(id_token.split(".", 1)[0]))
        except (ValueError, IndexError):
            raise SSOError("the ID token is malformed") from None
        if not isinstance(header, dict):
            raise SSOError("the ID token is malformed")
        if header.get("alg") not in allowed:
            raise SSOError(
                f"the ID token's algorithm {str(header.get('alg'))[:20]!r} is not accepted "
                f"(accepted: {', '.join(allowed) or 'none announced'})"
            )
        keys = await self._keys(header.get("kid"))
        try:
            token = jwt.decode(id_token, keys, algorithms=allowed)
        except JoseError as exc:
            raise SSOError(
                f"the ID token's signature is not valid ({exc.error}): refused"
            ) from None
        registry = jwt.JWTClaimsRegistry(
            now=int(self.clock()),
            leeway=int(CLOCK_SKEW),
            iss={"essential": True, "value": self.spec["issuer_url"]},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except JoseError as exc:
            raise SSOError(f"the ID token was refused: {exc.description or exc.error}") from None
        claims = dict(token.claims)
        iat = claims.get("iat")
        if isinstance(iat, int | float) and iat > self.clock() + CLOCK_SKEW:
            raise SSOError("the ID token was issued in the future: check the clocks")
        aud = claims.get("aud")
        audiences = aud if isinstance(aud, list) else [aud]
        client_id = self.spec["client_id"]
        if client_id not in audiences:
            raise SSOError("the ID token is for another client (aud): refused")
        if len(audiences) > 1 and claims.get("azp") != client_id:
            raise SSOError("the ID token's authorized party (azp) is another client: refused")
        return claims
