"""``tsh login --auth NAME``: single sign-on through the system browser (docs/sso.md).

tsh listens on 127.0.0.1 (a port the kernel picks), asks the hub for a login with its
public key, the listener's URL and a fresh 256-bit key, and opens the browser at the
URL the hub returns (``--browser none`` prints it). After the identity provider, the
hub redirects the browser to the listener with the certificates sealed under that key
(remoteler/ssoseal.py), or with a one-line refusal. The listener serves only
``GET /callback``, answers one request that carries ``response`` or ``error``, and
gives up when the hub's pending login lapses.
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import threading
import webbrowser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

from remoteler.errors import AuthError, UsageError
from remoteler.ssoseal import encode_key, new_key, unseal

PAGE = (
    "<!doctype html><html><head><meta charset=utf-8><title>Remoteler</title></head>"
    "<body><h1>{title}</h1><p>{body}</p></body></html>"
)
MAX_WAIT = 600.0


class _Callback:
    """The loopback listener: the first ``/callback`` with ``response`` or ``error``."""

    def __init__(self) -> None:
        self.result: dict[str, str] | None = None
        self.done = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items() if v}
                if parts.path != "/callback" or not ({"response", "error"} & set(query)):
                    self._answer(404, "Not found", "This is tsh's login listener.")
                    return
                if outer.done.is_set():
                    self._answer(409, "Already done", "This login has finished already.")
                    return
                outer.result = query
                outer.done.set()
                if "error" in query:
                    self._answer(403, "Login refused", "See the terminal for the reason.")
                else:
                    self._answer(200, "Logged in", "You can close this tab and go back to tsh.")

            def _answer(self, status: int, title: str, body: str) -> None:
                data = PAGE.format(title=title, body=body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "text/html; charset=utf-8")
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Cache-Control", "no-store")
                self.send_header("Referrer-Policy", "no-referrer")
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # the query holds the sealed certificates: never printed

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/callback"

    def __enter__(self) -> _Callback:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()


def _open(url: str, browser: str) -> None:
    if browser == "none":
        print(f"Open this URL in a browser to log in:\n  {url}", file=sys.stderr, flush=True)
        return
    print(f"Opening the browser to log in; if it does not open, visit:\n  {url}", file=sys.stderr)
    with contextlib.suppress(webbrowser.Error):  # the URL is printed
        webbrowser.open(url)


async def sso_login(
    call: Any, connector: str, public_key: str, ttl: int | None, browser: str
) -> dict[str, Any]:
    """Run the login; the hub's sealed answer, opened (user, ssh_cert, tls_cert...).
    ``call(method, **params)`` is an RPC to the hub over the pinned connection."""
    if browser not in ("default", "none"):
        raise UsageError("--browser takes 'none' (print the URL) or is left out")
    key = new_key()
    with _Callback() as listener:
        started = await call(
            "sso.start",
            connector=connector,
            public_key=public_key,
            ttl=ttl,
            redirect_url=listener.url,
            client_key=encode_key(key),
        )
        _open(str(started["url"]), browser)
        wait = min(float(started.get("expires_in") or MAX_WAIT), MAX_WAIT)
        got = await asyncio.to_thread(listener.done.wait, wait)
        if not got or listener.result is None:
            raise AuthError(
                f"the login was not finished in the browser within {int(wait)} s; "
                "run 'tsh login' again"
            )
        result = listener.result
    if "error" in result:
        raise AuthError(f"login refused: {result['error'][:500]}")
    return unseal(key, str(started["request_id"]), result["response"])
