"""Talking to a hub's web console as a browser's HTTP stack would (real TLS, ALPN
http/1.1, trusting the hub's web CA), for the HTTP-level web tests."""

from __future__ import annotations

import http.client
import json
import ssl
from dataclasses import dataclass, field
from http.cookies import SimpleCookie
from pathlib import Path
from typing import Any

from helpers import PASSWORD, Cluster, current_totp

COOKIE = "__Host-remoteler-session"


def web_context(cluster: Cluster) -> ssl.SSLContext:
    """What a browser that trusts DATA/web/ca.crt does: verify the chain and the name."""
    ctx = ssl.create_default_context(cafile=str(cluster.data / "web" / "ca.crt"))
    ctx.set_alpn_protocols(["h2", "http/1.1"])
    return ctx


@dataclass
class Reply:
    status: int
    headers: http.client.HTTPMessage
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


@dataclass
class WebClient:
    cluster: Cluster
    host: str = "localhost"
    cookies: dict[str, str] = field(default_factory=dict)
    csrf: str = ""

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        headers: dict[str, str] | None = None,
        *,
        csrf: bool = True,
    ) -> Reply:
        conn = http.client.HTTPSConnection(
            self.host, self.cluster.hub_port, context=web_context(self.cluster), timeout=30
        )
        try:
            hdrs = {"Host": f"{self.host}:{self.cluster.hub_port}", **(headers or {})}
            if self.cookies:
                hdrs["Cookie"] = "; ".join(f"{k}={v}" for k, v in self.cookies.items())
            if csrf and self.csrf:
                hdrs["X-CSRF-Token"] = self.csrf
            data = None
            if body is not None:
                data = json.dumps(body).encode()
                hdrs["Content-Type"] = "application/json"
            conn.request(method, path, body=data, headers=hdrs)
            resp = conn.getresponse()
            reply = Reply(resp.status, resp.headers, resp.read())
            for raw in resp.headers.get_all("Set-Cookie") or []:
                jar: SimpleCookie = SimpleCookie()
                jar.load(raw)
                for key, morsel in jar.items():
                    self.cookies[key] = morsel.value
            return reply
        finally:
            conn.close()

    def login(self, user: str, password: str = PASSWORD, offset_steps: int = 0) -> Reply:
        reply = self.request(
            "POST",
            "/web/api/login",
            {"user": user, "password": password, "otp": current_totp(offset_steps=offset_steps)},
        )
        if reply.status == 200:
            self.csrf = reply.json()["csrf"]
        return reply


def web_ca(cluster: Cluster) -> Path:
    return cluster.data / "web" / "ca.crt"
