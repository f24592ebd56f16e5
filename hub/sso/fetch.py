"""HTTP calls to identity providers: 10 s deadline, bodies capped at 1 MiB, JSON only.

Every failure is an :class:`~hub.sso.provider.SSOError` that names what was asked
(``what``) and never carries a token or a secret.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any, Protocol

from hub.sso.provider import SSOError

TIMEOUT = 10.0
MAX_BODY = 1 << 20


class Fetcher(Protocol):
    async def get_json(
        self, url: str, *, what: str, bearer: str | None = None
    ) -> dict[str, Any]: ...

    async def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        what: str,
        basic: tuple[str, str] | None = None,
    ) -> dict[str, Any]: ...


async def read_capped(resp: Any, too_big: str, limit: int = MAX_BODY) -> bytes:
    """The whole body of an aiohttp response, refused (SSOError ``too_big``) past
    ``limit`` bytes, whether or not it says its length."""
    if resp.content_length is not None and resp.content_length > limit:
        raise SSOError(too_big)
    body = bytearray()
    async for chunk in resp.content.iter_chunked(64 * 1024):
        body += chunk
        if len(body) > limit:
            raise SSOError(too_big)
    return bytes(body)


class HttpFetcher:
    """A new connection per call: logins are rare, and no pool outlives a provider."""

    async def _call(self, method: str, url: str, what: str, **kw: Any) -> dict[str, Any]:
        import aiohttp

        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        headers = {"Accept": "application/json", **kw.pop("headers", {})}
        try:
            async with (
                aiohttp.ClientSession(timeout=timeout) as http,
                http.request(method, url, headers=headers, allow_redirects=False, **kw) as resp,
            ):
                body = await read_capped(resp, f"{what} answered with more than 1 MiB: refused")
                status = resp.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise SSOError(f"cannot reach {what}: {type(exc).__name__}") from None
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if status >= 400:
            said = ""
            if isinstance(doc, dict):
                said = str(doc.get("error_description") or doc.get("error") or "")[:200]
            raise SSOError(f"{what} answered {status}{': ' + said if said else ''}")
        if not isinstance(doc, dict):
            raise SSOError(f"{what} did not answer with a JSON object")
        return doc

    async def get_json(self, url: str, *, what: str, bearer: str | None = None) -> dict[str, Any]:
        headers = {"Authorization": f"Bearer {bearer}"} if bearer else {}
        return await self._call("GET", url, what, headers=headers)

    async def post_form(
        self,
        url: str,
        form: Mapping[str, str],
        *,
        what: str,
        basic: tuple[str, str] | None = None,
    ) -> dict[str, Any]:
        import base64
        from urllib.parse import quote

        headers = {}
        if basic:  # RFC 6749 2.3.1: client id and secret form-encoded before base64
            pair = f"{quote(basic[0], safe='')}:{quote(basic[1], safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        return await self._call("POST", url, what, data=dict(form), headers=headers)
