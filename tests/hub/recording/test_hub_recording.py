"""The recording proxy's pieces without sockets: the hub's certificate check, the
certificate it signs for the device, the hub-side session record (real SQLite
audit store), and the nodes.recording column with its migration."""

from __future__ import annotations

import asyncio
import os
import shutil
import sqlite3
import subprocess
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from hub.recording import audit as recording_audit
from hub.recording.audit import HubSessionAudit
from hub.recording.auth import UPSTREAM_TTL, check_user_cert, upstream_cert
from hub.recording.session import UpstreamError
from hub.storage.api import AuditQuery, Node
from hub.storage.sqlite import open_sqlite
from hub.storage.sqlite.audit import SQLiteAuditLog
from remoteler.access import ACCESS_ROLE, RULES_EXTENSION, Role, encode_rules, resolve_rules
from remoteler.audit.events import AuditEvent
from remoteler.ca import DEFAULT_USER_EXTENSIONS, CertAuthority, generate_private_key
from remoteler.ca.sshcert import parse_certificate
from tsh.play import session_frames

NOW = 1_700_000_000
LABELS = {"env": "lab"}
PROD_ONLY = Role("prod-only", ("pi",), {"env": ("prod*",)})


@pytest.fixture(scope="module")
def user_ca() -> CertAuthority:
    return CertAuthority.generate("user", "test")


def _cert(
    ca: CertAuthority,
    *,
    key_id: str = "alice",
    principals: Sequence[str] = ("pi",),
    roles: Sequence[Role] = (ACCESS_ROLE,),
    critical: Mapping[str, str] | None = None,
    ttl: int = 3600,
) -> bytes:
    ext = dict(DEFAULT_USER_EXTENSIONS)
    ext[RULES_EXTENSION] = encode_rules(resolve_rules(roles, principals))
    line = ca.sign_ssh_user_cert(
        generate_private_key().public_key(),
        key_id=key_id,
        principals=principals,
        ttl_seconds=ttl,
        now=NOW,
        extensions=ext,
        critical_options=critical,
    )
    return parse_certificate(line).blob


def _reason(blob: bytes, cas: Sequence[CertAuthority], login: str = "pi") -> str | None:
    return check_user_cert(
        blob,
        login,
        user="alice",
        trusted=[ca.public_key for ca in cas],
        labels=LABELS,
        node_name="dev1",
        now=NOW,
    ).decision.reason


# -- the user's certificate at the hub ----------------------------------------------


def test_accepts_the_users_certificate_and_keeps_it(user_ca: CertAuthority) -> None:
    checked = check_user_cert(
        _cert(user_ca),
        "pi",
        user="alice",
        trusted=[user_ca.public_key],
        labels=LABELS,
        node_name="dev1",
        now=NOW,
    )
    assert checked.decision.reason is None
    assert checked.cert is not None and checked.cert.key_id == "alice"


def test_accepts_either_ca_during_a_rotation(user_ca: CertAuthority) -> None:
    next_ca = CertAuthority.generate("user", "test")
    assert _reason(_cert(next_ca), [user_ca, next_ca]) is None
    assert _reason(_cert(next_ca), [user_ca]) == "certificate not signed by the user CA"


def test_refuses_another_users_ssh_certificate(user_ca: CertAuthority) -> None:
    reason = _reason(_cert(user_ca, key_id="mallory"), [user_ca])
    assert reason is not None and "'mallory'" in reason and "'alice'" in reason


def test_refuses_a_login_the_certificate_does_not_name(user_ca: CertAuthority) -> None:
    reason = _reason(_cert(user_ca), [user_ca], login="root")
    assert reason == "login 'root' is not among the certificate's principals"


def test_refuses_what_the_signed_rules_do_not_allow_here(user_ca: CertAuthority) -> None:
    reason = _reason(_cert(user_ca, roles=(PROD_ONLY,)), [user_ca])
    assert reason is not None and "dev1" in reason


def test_refuses_expired_and_unknown_critical_options(user_ca: CertAuthority) -> None:
    expired = _cert(user_ca, ttl=10)
    assert check_user_cert(
        expired, "pi", user="alice", trusted=[user_ca.public_key], labels=LABELS,
        node_name="dev1", now=NOW + 11,
    ).decision.reason == "certificate expired or not yet valid"  # fmt: skip
    odd = _cert(user_ca, critical={"verify-required": ""})
    assert _reason(odd, [user_ca]) == "certificate has unknown critical option 'verify-required'"
    assert _reason(b"garbage", [user_ca]) is not None


def test_the_hub_decides_as_the_device_for_the_users_own_certificate(
    user_ca: CertAuthority,
) -> None:
    """One check (remoteler/usercert.py) at both: same answer, same permissions."""
    from edge_agent.authz import decide_user_cert

    other = CertAuthority.generate("user", "other")
    cases = [
        (_cert(user_ca), "pi"),
        (_cert(user_ca), "root"),
        (_cert(user_ca, roles=(PROD_ONLY,)), "pi"),
        (_cert(user_ca, critical={"verify-required": ""}), "pi"),
        (_cert(other), "pi"),
        (b"garbage", "pi"),
    ]
    for blob, login in cases:
        device = decide_user_cert(blob, login, user_ca.public_key, LABELS, "dev1", NOW)
        hub = check_user_cert(
            blob, login, user="alice", trusted=[user_ca.public_key], labels=LABELS,
            node_name="dev1", now=NOW,
        ).decision  # fmt: skip
        assert hub == device, (login, hub, device)


# -- the certificate the hub presents to the device -------------------------------------


def test_upstream_certificate_is_the_users_for_one_login_and_short(
    user_ca: CertAuthority, tmp_path: Path
) -> None:
    user = parse_certificate(
        _cert(
            user_ca,
            principals=("pi", "root"),
            critical={"force-command": "uptime", "source-address": "10.0.0.0/8"},
        )
    )
    key = generate_private_key()
    line = upstream_cert(user_ca, user, "pi", key, NOW)
    cert = parse_certificate(line)
    assert cert.signature_valid and cert.ca_public == user_ca.public_key
    assert cert.key_id == "alice" and cert.principals == ("pi",)
    assert dict(cert.extensions) == dict(user.extensions)  # the device enforces the roles
    assert dict(cert.critical_options) == {"force-command": "uptime"}
    assert cert.valid_before - NOW == UPSTREAM_TTL
    # never past the user's own certificate
    late = upstream_cert(user_ca, user, "pi", key, user.valid_before - 5)
    assert parse_certificate(late).valid_before == user.valid_before
    # expired while the device was being reached: no certificate at all
    for now in (user.valid_before, user.valid_before + 60):
        with pytest.raises(UpstreamError, match="expired; run 'tsh login'"):
            upstream_cert(user_ca, user, "pi", key, now)
    # and OpenSSH reads it
    path = tmp_path / "up-cert.pub"
    path.write_text(line + "\n")
    if shutil.which("ssh-keygen") is None:
        return
    shown = subprocess.run(["ssh-keygen", "-L", "-f", str(path)], capture_output=True, text=True)
    assert shown.returncode == 0, shown.stderr
    assert 'Key ID: "alice"' in shown.stdout and "force-command uptime" in shown.stdout


# -- the hub's session record -------------------------------------------------------------


async def _store(tmp_path: Path) -> SQLiteAuditLog:
    return await SQLiteAuditLog.open(tmp_path)  # tmp_path/audit.db, as a hub's data dir


def _record(store: Any, **kw: Any) -> HubSessionAudit:
    args: dict[str, Any] = {
        "user": "alice",
        "login": "pi",
        "session_id": "s1",
        "node_id": "n-1",
        "node_name": "dev1",
        "command": "echo hi",
        "subsystem": None,
        "pty": False,
        "device_session": "d1",
    }
    args.update(kw)
    return HubSessionAudit(store, **args)


async def test_session_record_replays_and_is_tagged_as_the_hubs(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        rec = _record(store)
        await rec.start()
        rec.input(b"typed")
        for part in (b"h", b"i\n", b"bye\n"):
            assert rec.output(part) is False
        await rec.end(3)
        events = await store.session("s1")
    finally:
        await store.close()
    assert [e.type for e in events] == ["session.start", "session.data", "exec", "session.end"]
    assert all(e.node == "hub" and e.fields["recorded_by"] == "hub" for e in events)
    assert events[0].fields["node_name"] == "dev1" and events[0].fields["device_session"] == "d1"
    frames = session_frames([e.to_wire() for e in events])
    assert b"".join(d for _, d in frames) == b"hi\nbye\n"
    end = events[-1].fields
    assert (end["exit_status"], end["bytes_in"], end["bytes_out"]) == (3, 5, 7)
    assert events[2].fields == {**events[2].fields, "command": "echo hi", "exit_code": 3}


async def test_subsystem_sessions_count_bytes_without_recording_them(tmp_path: Path) -> None:
    store = await _store(tmp_path)
    try:
        rec = _record(store, command=None, subsystem="sftp")
        await rec.start()
        rec.output(b"\x00\x00\x00\x05\x02sftp-binary")
        await rec.end(0)
        events = await store.session("s1")
    finally:
        await store.close()
    assert [e.type for e in events] == ["session.start", "session.end"]
    assert events[0].fields["subsystem"] == "sftp" and events[1].fields["bytes_out"] == 16


class SlowStore:
    """The real store behind a gate: records wait until the test opens it."""

    def __init__(self, store: SQLiteAuditLog) -> None:
        self.store = store
        self.gate = asyncio.Event()

    async def record(self, event: AuditEvent) -> None:
        if event.type == "session.data":
            await self.gate.wait()
        await self.store.record(event)


async def test_output_pauses_the_device_while_the_store_is_behind(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(recording_audit, "HIGH_WATER", 4096)
    store = await _store(tmp_path)
    slow = SlowStore(store)
    try:
        rec = _record(slow)
        rec.recorder.max_chunk_bytes = 1024
        await rec.start()
        blocks = [os.urandom(1024) for _ in range(12)]  # incompressible: a chunk each
        answers = [rec.output(block) for block in blocks]
        assert answers[0] is False and answers[-1] is True  # past HIGH_WATER: pause
        waiting = asyncio.ensure_future(rec.wait_room())
        await asyncio.sleep(0)
        assert not waiting.done()
        slow.gate.set()
        await asyncio.wait_for(waiting, 5)  # the store caught up: resume
        await rec.end(0)
        events = await store.session("s1")
    finally:
        await store.close()
    frames = session_frames([e.to_wire() for e in events])
    assert b"".join(d for _, d in frames) == b"".join(blocks)  # nothing lost


# -- nodes.recording ------------------------------------------------------------------------

OLD_NODES = """
CREATE TABLE nodes (
    id TEXT PRIMARY KEY, name TEXT UNIQUE NOT NULL, labels TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '', online INTEGER NOT NULL DEFAULT 0, last_seen REAL,
    joined REAL NOT NULL, token_labels TEXT NOT NULL DEFAULT '{}',
    audit_pending INTEGER NOT NULL DEFAULT 0, audit_oldest REAL
);
INSERT INTO nodes (id, name, labels, joined) VALUES ('n-1', 'old', '{}', 1.0);
"""


async def test_an_older_database_gets_the_recording_column(tmp_path: Path) -> None:
    path = tmp_path / "hub.db"
    with sqlite3.connect(path) as db:
        db.executescript(OLD_NODES)
    for _ in range(2):  # idempotent; a node with no audit.db beside it: a trail begun anew
        storage = await open_sqlite(path.parent, accept_empty_audit=True)
        try:
            old = await storage.nodes.get("old")
            assert old is not None and old.recording == "off"
            await storage.nodes.add(Node(id="n-2", name="new", joined=2.0))
            changed = await storage.nodes.set_recording("new", "proxy")
            assert changed is not None and changed.recording == "proxy"
            assert await storage.nodes.set_recording("missing", "proxy") is None
            with pytest.raises(ValueError):
                await storage.nodes.set_recording("old", "sometimes")
            await storage.nodes.delete("new")
        finally:
            await storage.close()


@settings(
    max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_bytes_are_refused_never_raised(user_ca: CertAuthority, data: st.DataObject) -> None:
    """The user's certificate blob comes off the wire: every mutation of a good one,
    and any bytes at all, get a reason (never an exception, never an accept)."""
    original = _cert(user_ca)
    good = bytearray(original)
    if data.draw(st.booleans()):
        blob = data.draw(st.binary(max_size=600))
    else:
        for _ in range(data.draw(st.integers(1, 4))):
            i = data.draw(st.integers(0, len(good) - 1))
            good[i] ^= data.draw(st.integers(1, 255))
        blob = bytes(good)
    assume(blob != original)  # two flips of one byte may cancel out
    assert _reason(blob, [user_ca]) is not None


async def test_a_quiet_session_is_flushed_within_a_chunk_interval(tmp_path: Path) -> None:
    """A few bytes and then silence (a shell prompt) reach the store while the session
    is still open: memory holds at most one interval of output."""
    now = [1000.0]
    store = await _store(tmp_path)
    try:
        rec = _record(store, clock=lambda: now[0])
        rec.recorder.max_chunk_seconds = 0.05
        await rec.start()
        rec.output(b"$ ")
        now[0] += 1.0  # the chunk is due by the session's clock
        for _ in range(200):
            if await store.search(AuditQuery(type="session.data")):
                break
            await asyncio.sleep(0.01)
        else:
            raise AssertionError("the pending chunk was not flushed")
        await rec.end(0)
    finally:
        await store.close()
