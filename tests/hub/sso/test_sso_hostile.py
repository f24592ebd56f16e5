"""Hostile clients against a real hub's SSO endpoints: a flood of login starts from one
address, bad tsh requests, garbage and replayed callbacks, an oversized SAML post. The
hub refuses each with one line, stays up, and never logs the client secret."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator
from typing import Any

import pytest
from helpers import Cluster, free_port
from webkit import WebClient

from hub.sso.flow import MAX_PENDING_PER_ADDR
from remoteler.ca import generate_private_key, public_key_to_openssh
from remoteler.errors import RemotelerError
from remoteler.hubconn import fetch_cluster_info, rpc_call
from remoteler.ssoseal import encode_key, new_key
from remoteler.tlsutil import client_context

SECRET = "hostile-test-client-secret-0123456789"
CONNECTOR = """\
kind = "github"
name = "gh"
client_id = "Ov23liHostile"
client_secret_file = "secret"
endpoint_url = "http://127.0.0.1:9"
teams_to_roles = [{ organization = "acme", team = "ops", roles = ["access"] }]
"""


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("ssohostile"), free_port())
    c.start_hub()
    try:
        (c.root / "secret").write_text(SECRET)
        (c.root / "gh.toml").write_text(CONNECTOR)
        c.tctl("create", "-f", str(c.root / "gh.toml"))
        yield c
    finally:
        c.stop()


def _rpc(hub: Cluster, method: str, **params: Any) -> Any:

    async def go() -> Any:
        info = await fetch_cluster_info(hub.addr)
        return await rpc_call(
            hub.addr, client_context(info["host_ca_pem"].encode()), method, **params
        )

    return asyncio.run(go())


def _start(hub: Cluster, **change: str) -> Any:
    params = {
        "connector": "gh",
        "public_key": public_key_to_openssh(generate_private_key().public_key()),
        "client_key": encode_key(new_key()),
        "redirect_url": "http://127.0.0.1:45678/callback",
        **change,
    }
    return _rpc(hub, "sso.start", **params)


@pytest.mark.parametrize(
    ("change", "needle"),
    [
        ({"redirect_url": "https://evil.example.com/callback"}, "redirect_url must be"),
        ({"client_key": "AAAA"}, "32 bytes"),
        ({"connector": "nope"}, "no SSO connector 'nope'"),
        ({"connector": "x" * 5000}, "no SSO connector"),
    ],
)
def test_bad_tsh_requests_get_one_line(hub: Cluster, change: dict[str, str], needle: str) -> None:
    with pytest.raises(RemotelerError) as err:
        _start(hub, **change)
    assert needle in str(err.value)
    assert "\n" not in str(err.value)


@pytest.mark.parametrize(
    ("method", "path", "status", "needle"),
    [
        ("GET", "/web/sso/callback?state=forged&code=x", 403, "finished already"),
        ("GET", "/web/sso/callback", 403, "finished already"),
        ("GET", "/web/sso/callback?state=" + "A" * 6000, 403, "finished already"),
        ("GET", "/web/sso/start/not-a-request", 400, "used already or has expired"),
        ("GET", "/web/sso/login/nope", 400, "no SSO connector"),
        ("POST", "/web/sso/acs", 403, "finished already"),
    ],
)
def test_garbage_callbacks_are_refused_pages(
    hub: Cluster, method: str, path: str, status: int, needle: str
) -> None:
    client = WebClient(hub)
    if method == "POST":
        reply = _post(client, path, "SAMLResponse=PHNhbWw%2B&RelayState=nothing")
    else:
        reply = client.request(method, path)
    assert reply.status == status
    assert needle in reply.body.decode()


def test_answers_for_no_pending_login_are_not_audited(hub: Cluster) -> None:
    """Anyone can send them: a flood must not grow the audit log (debug log only)."""
    for i in range(20):
        WebClient(hub).request("GET", f"/web/sso/callback?state=forged-{i}&code=x")
    events = hub.tctl_json("audit", "search", "--type", "user.login")
    assert [e for e in events if e["fields"].get("method") == "sso"] == []
    assert "forged-" not in hub.all_logs()


def _post(client: WebClient, path: str, body: str | bytes) -> Any:
    import http.client

    from webkit import Reply, web_context

    conn = http.client.HTTPSConnection(
        "localhost", client.cluster.hub_port, context=web_context(client.cluster), timeout=30
    )
    try:
        data = body.encode() if isinstance(body, str) else body
        conn.request(
            "POST", path, body=data, headers={"Content-Type": "application/x-www-form-urlencoded"}
        )
        resp = conn.getresponse()
        return Reply(resp.status, resp.headers, resp.read())
    finally:
        conn.close()


def test_an_oversized_saml_post_is_refused_unread(hub: Cluster) -> None:
    reply = _post(WebClient(hub), "/web/sso/acs", b"SAMLResponse=" + b"A" * (2 << 20))
    assert reply.status == 413
    assert WebClient(hub).request("GET", "/healthz").status == 200


def test_the_client_secret_is_never_logged_nor_shown(hub: Cluster) -> None:
    shown = hub.tctl("get", "connectors").stdout
    assert "********" in shown and SECRET not in shown
    assert SECRET not in hub.all_logs()
    events = hub.tctl("audit", "search", "--type", "connector.created", "--format", "json").stdout
    assert re.search(r"connector\.created", events) and SECRET not in events
    listing = WebClient(hub).request("GET", "/web/api/sso/connectors").json()
    assert listing["connectors"] == [{"name": "gh", "kind": "github", "display": "gh"}]


# last: it uses up this address's pending logins for the module's hub
def test_a_flood_of_login_starts_from_one_address_is_capped(hub: Cluster) -> None:
    started = 0
    refusal = ""
    for _ in range(MAX_PENDING_PER_ADDR + 5):
        try:
            _start(hub)
            started += 1
        except RemotelerError as exc:
            refusal = str(exc)
    assert started <= MAX_PENDING_PER_ADDR
    assert "too many logins started from your address" in refusal
    assert WebClient(hub).request("GET", "/healthz").status == 200


def test_the_client_secret_is_encrypted_at_rest_with_a_passphrase(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    c = Cluster(tmp_path_factory.mktemp("ssosealed"), free_port())
    passfile = c.root / "passphrase"
    passfile.write_text("a passphrase for the CA keys\n")
    passfile.chmod(0o600)
    c.start_hub("--ca-passphrase-file", str(passfile))
    try:
        (c.root / "secret").write_text(SECRET)
        (c.root / "gh.toml").write_text(CONNECTOR)
        c.tctl("create", "-f", str(c.root / "gh.toml"))
        assert "********" in c.tctl("get", "connectors").stdout
        stored = b"".join(p.read_bytes() for p in c.data.rglob("hub.db*"))
        assert b"Ov23liHostile" in stored  # the connector is there...
        assert SECRET.encode() not in stored  # ...its secret only sealed
    finally:
        c.stop()
