"""The web console (docs/web.md, issue 19): the fleet page at 10,000 nodes, and a
keystroke through the web terminal against one through ``tsh ssh``.

One hub, one real agent, and ``BENCH_WEB_NODES`` (10,000) more node rows written into
the hub's storage while it is stopped (offline nodes: the page lists them all the
same), with 40 sites and two environments as labels.

1. **Fleet API**: ``GET /web/api/nodes`` as the page asks for it (50 rows a page) on a
   kept-alive TLS connection (ALPN http/1.1, the web CA trusted), logged in with
   password + TOTP: the first page sorted by name, a search (``q=`` a name
   substring, 10 hits) and a label filter (``label=site=...``, one node in 40). The
   three are asked in turn, ``BENCH_WEB_REQUESTS`` (200) times each.
2. **Live states**: the hub's CPU while one fleet page is open (its server-sent
   event stream re-reads the fleet every second), against the same hub idle.
3. **Page in Chromium** (Debian's, through Playwright, the session cookie set in the
   browser): from navigation to the fleet table's rows, a fresh tab each time.
4. **Keystroke latency**: one byte written, its echo read, in a PTY shell that ran
   ``stty raw -echo; exec cat`` (so one byte comes back per byte sent): through the
   web terminal's websocket (a websockets client as the browser, offering
   permessage-deflate as browsers do) and through ``tsh ssh``'s own code in-process
   (bench/latency.py's approach): resumable, as ``tsh ssh`` is by default, and not,
   as the web bridge dials; in alternating blocks so all three see the same load.
"""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import json
import os
import signal
import socket
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from bench.fixtures import LOGIN, NODE
from bench.footprint import cpu_seconds
from bench.harness import Context, Figure, MissingTool, benchmark, median, p99, ratio

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from browserkit import chromium_path, launch
from helpers import Cluster, free_port, wait_for
from require import missing_hint
from webkit import COOKIE, WebClient, web_context

from remoteler.identity import read_identity_file
from tsh.ssh import open_ssh

BENCH = "web_console"
USER = "bench"
SITES = 40
PAGE = 50
#: Keystrokes each path sends before the ones that count, and per alternating block.
WARM_UP = 20
BLOCK = 100
#: What the shell runs before the keystrokes: no echo by the TTY, no line editing;
#: cat echoes each byte. The marker is split so the TTY's echo of the line is not it.
RAW_CAT = b"stty raw -echo; printf 'RE''ADY'; exec cat\n"
READY = b"READY"


@dataclass
class WebRig:
    cluster: Cluster
    identity: Path  # tctl auth sign output, for the tsh path
    web: WebClient  # logged in

    @property
    def cookie(self) -> str:
        return self.web.cookies[COOKIE]


async def _add_nodes(cluster: Cluster, n: int) -> None:
    from hub.storage import open_storage
    from hub.storage.api import Node

    storage = await open_storage(None, cluster.data)
    now = time.time()
    try:
        for i in range(n):
            labels = {"site": f"site-{i % SITES:02d}", "env": "dev" if i % 4 == 0 else "prod"}
            await storage.nodes.add(
                Node(
                    str(uuid.uuid4()),
                    f"truck-{i:05d}",
                    labels,
                    version=f"1.4.{i % 3}",
                    last_seen=now - 60 * (i % 1440),
                    joined=now - 86400,
                )
            )
    finally:
        await storage.close()


def _online(web: WebClient) -> bool:
    """The bench node is online (asked of the web API: ``tctl nodes ls`` takes ~1 s)."""
    reply = web.request("GET", f"/web/api/nodes?{urlencode({'q': NODE, 'state': 'online'})}")
    return reply.status == 200 and any(n["name"] == NODE for n in reply.json()["nodes"])


@contextlib.contextmanager
def web_rig(workdir: Path, nodes: int) -> Iterator[WebRig]:
    cluster = Cluster(workdir / "cluster", free_port())
    cluster.root.mkdir(parents=True, exist_ok=True)
    cluster.start_hub()
    try:
        cluster.add_user(USER, [LOGIN])
        identity = workdir / "bench-id"
        cluster.tctl("auth", "sign", "--user", USER, "--ttl", "1h", "-o", str(identity))
        # The rows go in while the hub is stopped: its own writes would race ours for
        # SQLite's write lock ("database is locked" at once, in some WAL states).
        cluster.kill_hub(signal.SIGTERM)
        asyncio.run(_add_nodes(cluster, nodes))
        cluster.start_hub()
        web = WebClient(cluster)
        reply = web.login(USER)
        if reply.status != 200:
            raise RuntimeError(f"web login failed: {reply.status} {reply.body[:200]!r}")
        cluster.start_agent(NODE, "env=bench")
        wait_for(lambda: _online(web), timeout=60, what="bench node online")
        yield WebRig(cluster, identity, web)
    finally:
        cluster.stop()


# 1. the fleet API ------------------------------------------------------------------


def fleet_queries(nodes: int) -> dict[str, dict[str, str]]:
    """What the page asks for: the first page, a search and a label filter."""
    first = {"sort": "name", "page": "1", "size": str(PAGE)}
    name = f"truck-{nodes // 2:05d}"[:-1]  # ten names share it
    return {
        "first page (sorted by name)": first,
        f"search q={name}": {**first, "q": name},
        "label filter site=site-07": {**first, "label": "site=site-07"},
    }


def fleet_figures(ctx: Context, rig: WebRig, nodes: int) -> list[Figure]:
    n = ctx.pick(int(os.environ.get("BENCH_WEB_REQUESTS", "200")), 5)
    queries = fleet_queries(nodes)
    port = rig.cluster.hub_port
    conn = http.client.HTTPSConnection(
        "localhost", port, context=web_context(rig.cluster), timeout=60
    )
    headers = {"Host": f"localhost:{port}", "Cookie": f"{COOKIE}={rig.cookie}"}
    times: dict[str, list[float]] = {label: [] for label in queries}
    totals: dict[str, int] = {}
    try:
        for i in range(n + 1):  # the first round opens the connection: not counted
            for label, params in queries.items():
                start = time.perf_counter()
                conn.request("GET", f"/web/api/nodes?{urlencode(params)}", headers=headers)
                resp = conn.getresponse()
                body = resp.read()
                took = (time.perf_counter() - start) * 1000
                if resp.status != 200:
                    raise RuntimeError(f"{label}: HTTP {resp.status} {body[:200]!r}")
                if i:
                    times[label].append(took)
                else:
                    totals[label] = json.loads(body)["total"]
    finally:
        conn.close()
    fleet = nodes + 1  # and the bench node
    return [
        Figure(
            BENCH,
            f"fleet API, {fleet:,} nodes: {label}",
            "ms",
            median(samples),
            p99(samples),
            samples,
            note=f"{totals[label]:,} match, {PAGE} a page; {n} requests, kept-alive TLS",
        )
        for label, samples in times.items()
    ]


# 2. live states --------------------------------------------------------------------


def _hub_cpu(rig: WebRig, seconds: float) -> float:
    """% of a core the hub spent over the next ``seconds``."""
    assert rig.cluster.hub is not None
    pid = rig.cluster.hub.pid
    cpu0, t0 = cpu_seconds(pid), time.monotonic()
    time.sleep(seconds)
    return 100 * (cpu_seconds(pid) - cpu0) / (time.monotonic() - t0)


def live_state_figures(ctx: Context, rig: WebRig, nodes: int) -> list[Figure]:
    seconds = ctx.pick(10.0, 0.5)
    idle = _hub_cpu(rig, seconds)
    port = rig.cluster.hub_port
    sock = web_context(rig.cluster).wrap_socket(
        socket.create_connection(("127.0.0.1", port), timeout=30), server_hostname="localhost"
    )
    stop = threading.Event()
    ticks = 0

    def read() -> None:  # as the browser: take what the stream sends
        nonlocal ticks
        with contextlib.suppress(OSError):
            while not stop.is_set():
                ticks += sock.recv(65536).count(b": tick")

    request = (
        f"GET /web/api/events HTTP/1.1\r\nHost: localhost:{port}\r\n"
        f"Cookie: {COOKIE}={rig.cookie}\r\nAccept: text/event-stream\r\n\r\n"
    )
    sock.sendall(request.encode())
    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        wait_for(lambda: ticks > 0, timeout=30, what="the first event-stream tick")
        open_page = _hub_cpu(rig, seconds)
    finally:
        stop.set()
        with contextlib.suppress(OSError):
            sock.shutdown(socket.SHUT_RDWR)
        sock.close()
        reader.join(timeout=10)
    return [
        Figure(
            BENCH,
            f"hub CPU, one fleet page open, {nodes + 1:,} nodes",
            "% core",
            open_page,
            reference=f"idle: {idle:.1f} % core",
            note=f"its live-state stream re-reads the fleet every second; over {seconds:g} s",
        )
    ]


# 3. the page in Chromium -------------------------------------------------------------


def _chromium() -> str:
    path = chromium_path()
    if path is None:
        raise MissingTool(f"the page-render row needs Chromium: {missing_hint('chromium')}")
    return path


def browser_figures(ctx: Context, rig: WebRig, nodes: int) -> list[Figure]:
    chromium = _chromium()
    from playwright.sync_api import sync_playwright

    n = ctx.pick(int(os.environ.get("BENCH_WEB_RENDERS", "15")), 1)
    url = f"https://localhost:{rig.cluster.hub_port}/web/"
    times: list[float] = []
    with sync_playwright() as pw:
        browser = launch(pw, rig.cluster.data, chromium)
        try:
            context = browser.new_context(viewport={"width": 1280, "height": 800})
            context.add_cookies(
                [
                    {
                        "name": COOKIE,
                        "value": rig.cookie,
                        "url": url.removesuffix("web/"),  # Path=/, as __Host- wants
                        "secure": True,
                        "httpOnly": True,
                        "sameSite": "Strict",
                    }
                ]
            )
            warm_up = ctx.pick(1, 0)  # fills the cache: not counted
            for i in range(warm_up + n):
                if i:
                    time.sleep(1.5)  # the last tab's event stream ends at its next tick
                page = context.new_page()
                page.set_default_timeout(60_000)
                start = time.perf_counter()
                page.goto(url)
                page.wait_for_selector(f"#fleet tbody tr:nth-child({PAGE})")
                took = (time.perf_counter() - start) * 1000
                page.close()
                if i >= warm_up:
                    times.append(took)
        finally:
            browser.close()
    return [
        Figure(
            BENCH,
            f"fleet page in Chromium, {nodes + 1:,} nodes",
            "ms",
            median(times),
            p99(times),
            times,
            note=f"navigation to {PAGE} rows drawn, a new tab each time; {n} loads, "
            "assets cached (immutable, versioned URLs)",
        )
    ]


# 4. keystroke latency ------------------------------------------------------------------


class _Echo:
    """One terminal: write a byte, wait for its echo."""

    async def write(self, data: bytes) -> None:
        raise NotImplementedError

    async def read(self) -> bytes:
        raise NotImplementedError

    async def start(self) -> None:
        """Run :data:`RAW_CAT` and wait until cat echoes."""
        await self.write(RAW_CAT)
        seen = b""
        async with asyncio.timeout(30):
            while READY not in seen:
                seen += await self.read()
        if seen.split(READY, 1)[1]:
            raise RuntimeError(f"unexpected output after the marker: {seen[-80:]!r}")

    async def rtt(self) -> float:
        start = time.perf_counter()
        await self.write(b"x")
        got = await self.read()
        took = (time.perf_counter() - start) * 1000
        if got != b"x":
            raise RuntimeError(f"expected the echo of one byte, got {got!r}")
        return took


class _SshEcho(_Echo):
    def __init__(self, process: Any) -> None:
        self.process = process

    async def write(self, data: bytes) -> None:
        self.process.stdin.write(data)

    async def read(self) -> bytes:
        data: bytes = await self.process.stdout.read(4096)
        if not data:
            raise RuntimeError("the tsh session ended")
        return data


class _WebEcho(_Echo):
    def __init__(self, ws: Any) -> None:
        self.ws = ws

    async def write(self, data: bytes) -> None:
        await self.ws.send(data)

    async def read(self) -> bytes:
        while True:
            msg = await self.ws.recv()
            if isinstance(msg, bytes):
                return msg
            control = json.loads(msg)  # text frames: the bridge's controls
            raise RuntimeError(f"the web terminal ended: {control}")


#: The paths a keystroke takes, in the order each block runs them.
TSH, TSH_NO_RESUME, WEB = "tsh ssh", "tsh ssh's code, resumption off", "web terminal"


async def _tsh_terminal(stack: contextlib.AsyncExitStack, rig: WebRig, resume: bool) -> _Echo:
    conn = await open_ssh(
        rig.cluster.addr, read_identity_file(rig.identity), LOGIN, NODE, resume=resume
    )
    stack.push_async_callback(conn.wait_closed)
    stack.callback(conn.close)  # first: the stack unwinds last in, first out
    process = await conn.create_process(
        None, encoding=None, term_type="xterm-256color", term_size=(80, 24)
    )
    return _SshEcho(process)


async def _web_terminal(stack: contextlib.AsyncExitStack, rig: WebRig) -> _Echo:
    from websockets.asyncio.client import connect

    port = rig.cluster.hub_port
    ctx = web_context(rig.cluster)
    ctx.set_alpn_protocols(["http/1.1"])
    query = urlencode(
        {"node": NODE, "login": LOGIN, "cols": "80", "rows": "24", "csrf": rig.web.csrf}
    )
    ws = await stack.enter_async_context(
        connect(
            f"wss://localhost:{port}/web/api/terminal?{query}",
            ssl=ctx,
            origin=f"https://localhost:{port}",  # type: ignore[arg-type]
            additional_headers={"Cookie": f"{COOKIE}={rig.cookie}"},
            open_timeout=30,
        )
    )
    return _WebEcho(ws)


async def _keystrokes(rig: WebRig, n: int) -> dict[str, list[float]]:
    async with contextlib.AsyncExitStack() as stack:
        paths = {
            TSH: await _tsh_terminal(stack, rig, resume=True),
            TSH_NO_RESUME: await _tsh_terminal(stack, rig, resume=False),
            WEB: await _web_terminal(stack, rig),
        }
        for echo in paths.values():
            await echo.start()
            for _ in range(WARM_UP):
                await echo.rtt()
        times: dict[str, list[float]] = {name: [] for name in paths}
        while len(times[WEB]) < n:
            for name, echo in paths.items():
                for _ in range(min(BLOCK, n - len(times[name]))):
                    times[name].append(await echo.rtt())
        return times


def keystroke_figures(ctx: Context, rig: WebRig) -> list[Figure]:
    n = ctx.pick(int(os.environ.get("BENCH_WEB_KEYSTROKES", "2000")), 20)
    times = asyncio.run(_keystrokes(rig, n))
    tsh, plain, web = times[TSH], times[TSH_NO_RESUME], times[WEB]
    note = f"{n} keystrokes each, in alternating blocks of {BLOCK}; PTY shell running cat"
    return [
        Figure(BENCH, f"keystroke, {TSH}", "ms", median(tsh), p99(tsh), tsh, note=note),
        Figure(
            BENCH,
            f"keystroke, {TSH_NO_RESUME}",
            "ms",
            median(plain),
            p99(plain),
            plain,
            reference=TSH,
            ratio=ratio(median(plain), median(tsh)),
            note=f"as the web bridge dials; p99 vs {TSH}: {p99(plain) - p99(tsh):+.3f} ms",
        ),
        Figure(
            BENCH,
            f"keystroke, {WEB}",
            "ms",
            median(web),
            p99(web),
            web,
            reference=TSH,
            ratio=ratio(median(web), median(tsh)),
            note=f"p99 added by the web path: {p99(web) - p99(tsh):+.3f} ms "
            f"({p99(web) - p99(plain):+.3f} ms vs resumption off); {note}",
        ),
    ]


@benchmark(BENCH)
def web_console(ctx: Context) -> list[Figure]:
    nodes = ctx.pick(int(os.environ.get("BENCH_WEB_NODES", "10000")), 200)
    _chromium()  # before minutes of set-up, not after
    with web_rig(ctx.workdir, nodes) as rig:
        return [
            *fleet_figures(ctx, rig, nodes),
            *live_state_figures(ctx, rig, nodes),
            *browser_figures(ctx, rig, nodes),
            *keystroke_figures(ctx, rig),
        ]
