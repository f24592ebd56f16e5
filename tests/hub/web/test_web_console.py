"""The web console over real TLS from a hub process: the web certificate, health and
metrics, login, cookies, CSRF, CSP, the fleet query and the RPC gateway's permissions.
The browser itself drives the console in tests/e2e/test_web_browser.py."""

from __future__ import annotations

import json
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from helpers import Cluster, free_port, wait_for
from webkit import WebClient, web_ca, web_context

METRICS_TOKEN = "metrics-token-0123456789abcdef"
_users = iter(range(1000))


def new_user(hub: Cluster, admin: bool = False) -> str:
    """A user of its own for a test: a TOTP code works once per user (replays refused)."""
    name = f"{'admin' if admin else 'user'}{next(_users)}"
    hub.add_user(name, ["root" if admin else "pi"], roles="access,editor" if admin else "access")
    return name


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("web")
    token_file = root / "metrics-token"
    token_file.write_text(METRICS_TOKEN + "\n")
    c = Cluster(root, free_port())
    c.start_hub("--metrics-token-file", str(token_file))
    try:
        c.add_user("alice", ["root"], roles="access,editor")
        for name, labels in (("truck-1", "env=prod,site=berlin"), ("truck-2", "env=dev")):
            c.start_agent(name, labels, None, "--heartbeat-interval", "2")
        wait_for(lambda: c.node_online("truck-1") and c.node_online("truck-2"), what="agents")
        yield c
    finally:
        c.stop()


def test_browsers_get_an_ecdsa_p256_certificate_from_the_web_ca(hub: Cluster) -> None:
    ctx = web_context(hub)  # verifies chain and name against DATA/web/ca.crt
    with (
        socket.create_connection(("127.0.0.1", hub.hub_port)) as raw,
        ctx.wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        assert tls.selected_alpn_protocol() == "http/1.1"
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    cert = x509.load_der_x509_certificate(der)
    key = cert.public_key()
    assert isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name == "secp256r1"
    ca = x509.load_pem_x509_certificate(web_ca(hub).read_bytes())
    assert cert.issuer == ca.subject
    # without ALPN (tsh, tctl, agents) the pinned Ed25519 API certificate answers
    api = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    api.check_hostname, api.verify_mode = False, ssl.CERT_NONE
    with (
        socket.create_connection(("127.0.0.1", hub.hub_port)) as raw,
        api.wrap_socket(raw) as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    assert not isinstance(
        x509.load_der_x509_certificate(der).public_key(), ec.EllipticCurvePublicKey
    )
    assert hub.login("alice").returncode == 0  # tsh still logs in on the same port


def test_health_is_open_and_metrics_need_the_token(hub: Cluster) -> None:
    web = WebClient(hub)
    assert (web.request("GET", "/healthz").status, web.request("GET", "/readyz").status) == (
        200,
        200,
    )
    refused = web.request("GET", "/metrics")
    assert refused.status == 401 and b"Bearer" in refused.body
    wrong = web.request("GET", "/metrics", headers={"Authorization": "Bearer nope"})
    assert wrong.status == 401
    ok = web.request("GET", "/metrics", headers={"Authorization": f"Bearer {METRICS_TOKEN}"})
    assert ok.status == 200
    text = ok.body.decode()
    assert "remoteler_tunnels 2.0" in text  # two agents hold a tunnel to this hub
    for name in (
        "remoteler_loop_lag_seconds",
        "remoteler_handshakes_waiting",
        "remoteler_sessions",
    ):
        assert name in text
    assert METRICS_TOKEN not in (hub.root / "hub.log").read_text()


def test_login_sets_a_strict_cookie_and_every_page_a_strict_csp(hub: Cluster) -> None:
    web = WebClient(hub)
    bob = new_user(hub)
    bad = web.request("POST", "/web/api/login", {"user": bob, "password": "x", "otp": "000000"})
    assert bad.status == 401 and "error" in bad.json()
    reply = web.login(bob)
    assert reply.status == 200, reply.body
    cookie = reply.headers["Set-Cookie"]
    assert "HttpOnly" in cookie and "Secure" in cookie and "SameSite=Strict" in cookie
    assert cookie.startswith("__Host-remoteler-session=") and "Path=/" in cookie
    page = web.request("GET", "/web/")
    csp = page.headers["Content-Security-Policy"]
    assert page.status == 200 and "unsafe-inline" not in csp and "script-src 'self'" in csp
    nonce = csp.split("'nonce-")[1].split("'")[0]
    assert f'content="{nonce}"' in page.body.decode()  # the page hands it to xterm's styles
    assert web.request("GET", "/web/").headers["Content-Security-Policy"] != csp  # per page
    me = web.request("GET", "/web/api/me").json()
    assert me["user"] == bob and me["logins"] == ["pi"]
    assert b"correct horse" not in (hub.root / "hub.log").read_bytes()


def test_no_cookie_or_no_csrf_token_is_refused(hub: Cluster) -> None:
    anon = WebClient(hub)
    assert anon.request("GET", "/web/api/nodes").status == 401
    assert anon.request("POST", "/web/api/call/admin.locks.ls", {}).status == 401
    web = WebClient(hub)
    assert web.login(new_user(hub, admin=True)).status == 200
    token, web.csrf = web.csrf, ""
    refused = web.request("POST", "/web/api/call/admin.locks.ls", {})
    assert refused.status == 403 and "CSRF" in refused.json()["error"]
    web.csrf = "x" * len(token)
    assert web.request("POST", "/web/api/call/admin.locks.ls", {}).status == 403
    web.csrf = token
    other_site = web.request(
        "POST", "/web/api/call/admin.locks.ls", {}, {"Origin": "https://evil.example"}
    )
    assert other_site.status == 403
    assert web.request("POST", "/web/api/call/admin.locks.ls", {}).status == 200
    # methods outside the console's list are refused even for an admin
    assert web.request("POST", "/web/api/call/admin.auth.rotate", {}).status == 400


def test_fleet_is_filtered_sorted_and_paged_by_the_hub(hub: Cluster) -> None:
    web = WebClient(hub)
    assert web.login(new_user(hub, admin=True)).status == 200
    everything = web.request("GET", "/web/api/nodes").json()
    assert [n["name"] for n in everything["nodes"]] == ["truck-1", "truck-2"]
    assert everything["fleet"] == {"nodes": 2, "online": 2}
    # each agent reports its host certificate's expiry (the fleet's Certificate column)
    wait_for(
        lambda: all(
            (n.get("cert_expires") or 0) > time.time()
            for n in web.request("GET", "/web/api/nodes").json()["nodes"]
        ),
        what="host certificate expiry in the fleet rows",
    )
    prod = web.request("GET", "/web/api/nodes?label=env%3Dprod").json()
    assert [n["name"] for n in prod["nodes"]] == ["truck-1"] and prod["total"] == 1
    desc = web.request("GET", "/web/api/nodes?sort=-name&size=1&page=2").json()
    assert [n["name"] for n in desc["nodes"]] == ["truck-1"] and desc["pages"] == 2
    assert web.request("GET", "/web/api/nodes?q=berlin").json()["total"] == 1
    assert web.request("GET", "/web/api/nodes?sort=secret").status == 400


def test_a_user_without_admin_rights_gets_the_same_refusal_as_tctl(hub: Cluster) -> None:
    web = WebClient(hub)
    bob = new_user(hub)
    assert web.login(bob).status == 200
    refused = web.request("POST", "/web/api/call/admin.locks.add", {"kind": "user", "target": "x"})
    assert refused.status == 403
    events = hub.tctl_json("audit", "search", "--type", "web.action", "--user", bob)
    assert any(
        e["fields"]["action"] == "admin.locks.add"
        and e["fields"]["ok"] is False
        and e["fields"]["remote_addr"] == "127.0.0.1"
        for e in events
    )


def test_logout_ends_the_session(hub: Cluster) -> None:
    web = WebClient(hub)
    assert web.login(new_user(hub)).status == 200
    assert web.request("POST", "/web/api/logout", {}).status == 200
    assert web.request("GET", "/web/api/me").status == 401


def test_sse_stream_says_when_a_node_goes_offline(hub: Cluster, tmp_path: Path) -> None:
    web = WebClient(hub)
    assert web.login(new_user(hub)).status == 200
    ctx = web_context(hub)
    with socket.create_connection(("127.0.0.1", hub.hub_port)) as raw:
        tls = ctx.wrap_socket(raw, server_hostname="localhost")
        cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.items())
        tls.sendall(
            f"GET /web/api/events HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n".encode()
        )
        tls.settimeout(20)
        head = tls.recv(4096).decode()
        while ": tick" not in head:  # the first tick: the stream knows every node's state
            head += tls.recv(4096).decode()
        assert "text/event-stream" in head
        hub.agents["truck-2"].terminate()
        deadline, seen = time.time() + 30, ""
        while time.time() < deadline and '"online": false' not in seen:
            seen += tls.recv(4096).decode()
        tls.close()
    assert "data: " in seen, seen[-2000:]
    event = next(line for line in seen.splitlines() if line.startswith("data: "))
    assert json.loads(event[6:])["name"] == "truck-2"
    hub.start_agent("truck-2", "env=dev", None, "--heartbeat-interval", "2")
    wait_for(lambda: hub.node_online("truck-2"), what="truck-2 back")


def test_live_views_per_session_are_capped(hub: Cluster) -> None:
    web = WebClient(hub)
    assert web.login(new_user(hub)).status == 200
    cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.items())
    streams = []
    try:
        for _ in range(5):
            sock = web_context(hub).wrap_socket(
                socket.create_connection(("127.0.0.1", hub.hub_port), timeout=20),
                server_hostname="localhost",
            )
            request = f"GET /web/api/events HTTP/1.1\r\nHost: localhost\r\nCookie: {cookie}\r\n\r\n"
            sock.sendall(request.encode())
            streams.append(sock)
            head = sock.recv(4096).decode()
            if len(streams) <= 4:
                assert "200 OK" in head, head
            else:
                assert "429" in head.split("\r\n")[0], head
    finally:
        for sock in streams:
            sock.close()


def test_a_terminal_message_past_its_cap_closes_the_terminal(hub: Cluster) -> None:
    from websockets.exceptions import ConnectionClosed
    from websockets.sync.client import connect

    web = WebClient(hub)
    assert web.login(new_user(hub, admin=True)).status == 200
    cookie = "; ".join(f"{k}={v}" for k, v in web.cookies.items())
    url = f"wss://localhost:{hub.hub_port}/web/api/terminal?node=truck-1&login=root&csrf={web.csrf}"
    ctx = web_context(hub)
    ctx.set_alpn_protocols(["http/1.1"])
    with connect(url, ssl=ctx, additional_headers={"Cookie": cookie}, open_timeout=20) as ws:
        ws.send(b"x" * (64 * 1024 + 1))
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                ws.recv(timeout=20)
        assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009
    assert WebClient(hub).request("GET", "/healthz").status == 200


def test_a_locked_users_web_sessions_end(hub: Cluster) -> None:
    web = WebClient(hub)
    name = new_user(hub)
    assert web.login(name).status == 200
    lock = hub.tctl_json("lock", "--user", name, "--message", "laptop stolen", "--ttl", "5m")
    try:
        wait_for(lambda: web.request("GET", "/web/api/me").status == 401, what="session ended")
    finally:
        hub.tctl("unlock", lock["id"])
