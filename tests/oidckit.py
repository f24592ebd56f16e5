"""A real OpenID Provider for the SSO tests: oidc-provider from npm (tests/idp), run by
node on 127.0.0.1, and a relay in front of it that can tamper with ID tokens.

``OIDCProvider.start(root, clients, users)`` writes the config, starts node, reads the
port it prints, and ``stop()`` ends it by its process id. ``TokenRelay`` is a small
HTTP reverse proxy (aiohttp, in a thread of the test) that the provider is told is its
issuer: the hub and the browser both go through it, and with ``tamper = True`` it
rewrites the ``id_token`` of token responses (a claim changed, the signature kept),
as an attacker on the path would.
"""

from __future__ import annotations

import asyncio
import base64
import json
import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from helpers import stop_process

IDP_DIR = Path(__file__).resolve().parent / "idp"
HINT = "node or tests/idp/node_modules is missing: run 'make idp' (needs nodejs and npm)"


def _node() -> str:
    node = shutil.which("node")
    if node is None or not (IDP_DIR / "node_modules" / "oidc-provider").is_dir():
        pytest.fail(HINT)
    return node


@dataclass
class OIDCProvider:
    proc: subprocess.Popen[Any]
    port: int
    issuer: str
    log: Path

    @classmethod
    def start(
        cls,
        root: Path,
        clients: list[dict[str, Any]],
        users: dict[str, dict[str, Any]],
        issuer: str | None = None,
    ) -> OIDCProvider:
        root.mkdir(parents=True, exist_ok=True)
        config = root / "oidc.json"
        config.write_text(json.dumps({"issuer": issuer, "clients": clients, "users": users}))
        log = root / "oidc.log"
        proc = subprocess.Popen(
            [_node(), str(IDP_DIR / "oidc_provider.mjs"), str(config)],
            stdout=subprocess.PIPE,
            stderr=open(log, "ab"),  # noqa: SIM115 - the child keeps it
            text=True,
            cwd=IDP_DIR,
        )
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            stop_process(proc)
            raise AssertionError(f"oidc-provider did not start: {log.read_text()[-2000:]}")
        said = json.loads(line)
        return cls(proc, int(said["port"]), str(said["issuer"]), log)

    def stop(self) -> None:
        stop_process(self.proc)


def tamper_id_token(token: str) -> str:
    """The token with one claim changed and the signature kept: must fail to verify."""
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    claims["sub"] = "mallory"
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    return f"{head}.{forged}.{sig}"


@dataclass
class TokenRelay:
    """A reverse proxy on 127.0.0.1 to ``target`` (the provider's port)."""

    target: int
    port: int = 0
    tamper: bool = False
    tampered: int = 0
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _ready: threading.Event = field(default_factory=threading.Event)
    _runner: Any = None

    def start(self) -> TokenRelay:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise AssertionError("the token relay did not start")
        return self

    def _run(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._loop.run_until_complete(self._serve())
        self._loop.run_forever()

    async def _serve(self) -> None:
        from aiohttp import ClientSession, web

        self._http = ClientSession(auto_decompress=True)

        async def relay(request: web.Request) -> web.StreamResponse:
            skip = {"host", "content-length", "transfer-encoding", "connection", "accept-encoding"}
            headers = {k: v for k, v in request.headers.items() if k.lower() not in skip}
            headers["Host"] = request.host
            url = f"http://127.0.0.1:{self.target}{request.rel_url}"
            body = await request.read()
            async with self._http.request(
                request.method, url, headers=headers, data=body, allow_redirects=False
            ) as resp:
                data = await resp.read()
                if self.tamper and request.path.endswith("/token") and resp.status == 200:
                    doc = json.loads(data)
                    doc["id_token"] = tamper_id_token(doc["id_token"])
                    data = json.dumps(doc).encode()
                    self.tampered += 1
                out = web.Response(status=resp.status, body=data)
                drop = {"content-length", "transfer-encoding", "content-encoding", "connection"}
                for key, value in resp.headers.items():
                    if key.lower() not in drop:
                        out.headers.add(key, value)
                return out

        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", relay)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        server = site._server
        assert server is not None
        self.port = server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self._ready.set()

    def stop(self) -> None:
        loop = self._loop
        if loop is None:
            return

        async def close() -> None:
            await self._http.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        if self._thread is not None:
            self._thread.join(10)
