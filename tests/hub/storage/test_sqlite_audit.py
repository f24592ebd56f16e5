"""SQLiteAuditLog on a real ``audit.db``: idempotent, node-forced, searchable, indexed.

The cases both engines share (idempotent insert, reused seq, search, sessions) are
also in test_contract.py; these are the SQLite file's own (its mode, its indexes,
the trail of an older hub) and the finer points of the former
``tests/hub/test_audit_store.py``.
"""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
import stat
from collections.abc import AsyncIterator, Sequence
from pathlib import Path

import pytest

from hub.audit.session_prefix import resolve_session_prefix
from hub.storage.api import AuditQuery, StorageError
from hub.storage.sqlite import audit as sqlite_audit
from hub.storage.sqlite.audit import SQLiteAuditLog
from remoteler.audit import AuditEvent, EventType, make_event

SCHEMA = Path(sqlite_audit.__file__).parent / "schema" / "audit" / "0001_initial.sql"


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[SQLiteAuditLog]:
    s = await SQLiteAuditLog.open(tmp_path)
    try:
        yield s
    finally:
        await s.close()


def _ev(type_: str, seq: int, now: float, **kw: object) -> AuditEvent:
    fields = {
        "exec": {"command": "id", "exit_code": 0},
        "session.data": {"chunk": seq, "codec": "raw", "data": b"\x01\x02"},
    }.get(type_, {})
    event = make_event(type_, node="claimed", now=now, **{**fields, **kw})  # type: ignore[arg-type]
    return dataclasses.replace(event, seq=seq)


async def _insert(store: SQLiteAuditLog, node: str, events: Sequence[AuditEvent]) -> int:
    return (await store.insert_checked(node, events)).inserted


async def test_file_is_private(tmp_path: Path, store: SQLiteAuditLog) -> None:
    assert store.path == tmp_path / "audit.db"
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


async def test_a_readable_file_is_made_private_again(tmp_path: Path) -> None:
    await (await SQLiteAuditLog.open(tmp_path)).close()
    (tmp_path / "audit.db").chmod(0o644)
    await (await SQLiteAuditLog.open(tmp_path)).close()
    assert stat.S_IMODE((tmp_path / "audit.db").stat().st_mode) == 0o600


async def test_insert_is_idempotent_and_forces_the_node(store: SQLiteAuditLog) -> None:
    batch = [_ev("exec", i, 1000.0 + i) for i in range(1, 6)]
    assert await _insert(store, "node-a", batch) == 5
    assert await _insert(store, "node-a", batch) == 0
    assert await _insert(store, "node-a", [*batch[3:], _ev("exec", 6, 1006.0)]) == 1
    assert await store.count() == 6 and await store.count("node-a") == 6
    assert await store.count("claimed") == 0
    stored = await store.search(AuditQuery())
    assert {e.node for e in stored} == {"node-a"}
    assert [e.id for e in stored[:5]] == [e.id for e in batch]
    assert [dataclasses.replace(e, node="claimed") for e in stored[:5]] == batch


async def test_same_event_id_from_two_nodes_is_two_rows(store: SQLiteAuditLog) -> None:
    event = _ev("exec", 1, 1000.0)
    assert await _insert(store, "node-a", [event]) == 1
    assert await _insert(store, "node-b", [event]) == 1
    assert await store.count() == 2


async def test_record_keeps_the_hub_node(store: SQLiteAuditLog) -> None:
    await store.record(make_event(EventType.USER_LOGIN, node="hub", user="alice"))
    (event,) = await store.search(AuditQuery(node="hub"))
    assert event.type == "user.login" and event.user == "alice"


async def test_search_filters_and_order(store: SQLiteAuditLog) -> None:
    a = [
        _ev("session.start", 1, 100.0, user="alice", session_id="s1"),
        _ev("session.data", 2, 101.0, user="alice", session_id="s1"),
        _ev("exec", 3, 105.0, user="bob"),
    ]
    b = [
        _ev("session.start", 1, 100.0, user="bob", session_id="s2"),
        _ev("exec", 2, 103.0, user="alice"),
    ]
    await _insert(store, "node-b", b)
    await _insert(store, "node-a", a)

    async def ids(**kw: object) -> list[str]:
        return [e.id for e in await store.search(AuditQuery(**kw))]  # type: ignore[arg-type]

    everything = await store.search(AuditQuery())
    assert [(e.time, e.seq) for e in everything] == [
        (100.0, 1),
        (100.0, 1),
        (101.0, 2),
        (103.0, 2),
        (105.0, 3),
    ]
    assert await ids(node="node-a") == [e.id for e in a]
    assert set(await ids(user="alice")) == {a[0].id, a[1].id, b[1].id}
    assert await ids(type="exec") == [b[1].id, a[2].id]
    assert await ids(session_id="s1") == [a[0].id, a[1].id]
    # since inclusive, until exclusive
    assert await ids(since=101.0, until=105.0) == [a[1].id, b[1].id]
    assert len(await ids(limit=2)) == 2
    assert await ids(type="exec", user="alice", node="node-a") == []
    data = (await store.search(AuditQuery(type="session.data")))[0]
    assert data.fields["data"] == b"\x01\x02"
    with pytest.raises(StorageError):
        await store.search(AuditQuery(limit=0))


async def test_search_pages_through_more_than_a_page(
    store: SQLiteAuditLog, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(sqlite_audit, "PAGE", 7)
    batch = [_ev("exec", i, 500.0 + (i // 3)) for i in range(1, 51)]  # ties on time
    await _insert(store, "n", batch)
    assert [e.id for e in await store.search(AuditQuery(limit=None))] == [e.id for e in batch]
    assert [e.id for e in await store.search(AuditQuery(limit=20))] == [e.id for e in batch[:20]]
    newest = [e.id async for e in store.iter_search(AuditQuery(limit=20, newest_first=True))]
    assert newest == [e.id for e in reversed(batch[-20:])]  # keyset paging backwards
    every = [e.id async for e in store.iter_search(AuditQuery(limit=None, newest_first=True))]
    assert every == [e.id for e in reversed(batch)]


async def test_a_short_session_id_resolves_to_one_of_the_users_sessions(
    store: SQLiteAuditLog,
) -> None:
    from remoteler.errors import UsageError

    await _insert(
        store,
        "n",
        [
            _ev("session.start", 1, 1.0, session_id="abcd1111-x", user="u"),
            _ev("exec", 2, 2.0, session_id="abcd1111-x", user="u"),
            _ev("session.start", 3, 3.0, session_id="abcd2222-y", user="u"),
            _ev("session.start", 4, 4.0, session_id="abce3333-z", user="other"),
            _ev("session.start", 5, 5.0, session_id="ab%_4444", user="u"),
        ],
    )
    resolve = resolve_session_prefix
    assert await resolve(store, "abcd1", "u") == "abcd1111-x"
    assert await resolve(store, "abce", "u") == "abce"  # someone else's: not resolved
    assert await resolve(store, "abce", "other") == "abce3333-z"
    assert await resolve(store, "ab%_", "u") == "ab%_4444"  # no LIKE wildcards
    assert await resolve(store, "abc", "u") == "abc"  # too short to look up
    with pytest.raises(UsageError) as err:
        await resolve(store, "abcd", "u")
    assert "abcd1111-x, abcd2222-y" in str(err.value) and "more characters" in str(err.value)


async def test_session_is_ordered_by_seq(store: SQLiteAuditLog) -> None:
    # Times out of order (a device clock stepped back): seq is what the node saw.
    events = [
        _ev("session.start", 10, 200.0, session_id="s9"),
        _ev("session.data", 11, 150.0, session_id="s9"),
        _ev("exec", 12, 199.0, session_id="s9"),
    ]
    await _insert(store, "n", list(reversed(events)))
    await _insert(store, "n", [_ev("exec", 13, 201.0, session_id="other")])
    assert [e.seq for e in await store.session("s9")] == [10, 11, 12]
    assert await store.session("nope") == []


async def test_reopen_keeps_events(tmp_path: Path) -> None:
    store = await SQLiteAuditLog.open(tmp_path)
    await _insert(store, "n", [_ev("exec", 1, 1.0)])
    await store.close()
    store = await SQLiteAuditLog.open(tmp_path)
    try:
        assert await store.count() == 1
    finally:
        await store.close()


async def test_a_short_id_lookup_walks_the_session_index_not_the_users_events(
    store: SQLiteAuditLog,
) -> None:
    """``tsh play PREFIX``: the lookup is a range on the session index, never a walk of
    all of the caller's events (events_user). With ``user = ?`` SQLite chose the user
    index: 545 ms per lookup for a user with 200,000 events (this machine), on the audit
    store's one connection, which ingest waits for; 0.01 ms on the session range."""
    await _insert(store, "n", [_ev("exec", i, float(i), session_id=f"s{i:04d}") for i in range(50)])
    statements: list[str] = []
    await store._db.conn.set_trace_callback(statements.append)
    for user in ("u", None):
        await store.session_ids("s001", user, 6)
    await store._db.conn.set_trace_callback(None)
    lookups = [s for s in statements if "DISTINCT session_id" in s]
    assert len(lookups) == 2, statements
    db = sqlite3.connect(store.path)
    try:
        for sql in lookups:  # the trace shows the statement with its values bound in
            plan = " ".join(str(row[-1]) for row in db.execute("EXPLAIN QUERY PLAN " + sql))
            assert "events_session" in plan and "events_user" not in plan, plan
    finally:
        db.close()


async def test_a_reused_seq_is_refused_and_the_same_id_is_still_a_no_op(
    store: SQLiteAuditLog,
) -> None:
    """A device that lost its outbox and numbered from 1 again: its new events under
    seq 1-3 are refused (named), the re-sent originals stay no-ops, other nodes and
    the hub's own seq-0 events are not affected."""
    first = [_ev("exec", i, 1000.0 + i) for i in range(1, 4)]
    assert await _insert(store, "node-a", first) == 3
    again = [_ev("exec", i, 2000.0 + i) for i in range(1, 5)]  # new ids, seq 1-4
    result = await store.insert_checked("node-a", [*first, *again])
    assert result.inserted == 1  # only seq 4 is new
    assert [(r.seq, r.id, r.stored_id) for r in result.reused] == [
        (e.seq, e.id, f.id) for e, f in zip(again, first, strict=False)
    ]
    assert result.seq_floor == 5
    assert [e.id for e in await store.search(AuditQuery(node="node-a"))] == [
        *(e.id for e in first),
        again[3].id,
    ]
    assert await _insert(store, "node-b", again) == 4  # seq is per node
    hub_events = [make_event(EventType.USER_LOGIN, node="hub", user="u") for _ in range(3)]
    assert await _insert(store, "hub", hub_events) == 3  # seq 0: never compared


async def test_two_events_of_one_batch_with_one_seq_keep_the_first(
    store: SQLiteAuditLog,
) -> None:
    a, b = _ev("exec", 9, 1000.0), _ev("exec", 9, 1001.0)
    result = await store.insert_checked("node-a", [a, b])
    assert result.inserted == 1 and [r.id for r in result.reused] == [b.id]


async def test_the_reused_seq_check_probes_the_index(store: SQLiteAuditLog) -> None:
    """One index lookup per seq, not a scan of the node's trail (which made each batch
    cost grow with the events already stored)."""
    db = sqlite3.connect(store.path)
    try:
        plan = db.execute(
            "EXPLAIN QUERY PLAN " + sqlite_audit.seq_owner_query(3), ["n", 1, 2, 3]
        ).fetchall()
    finally:
        db.close()
    assert "events_node_seq (node=? AND seq=?)" in " ".join(str(row[-1]) for row in plan)


async def test_opening_a_trail_from_before_the_seq_index_says_it_builds_it_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The (node, seq) index is built at the first start over an existing trail (the
    hub not listening meanwhile): one warning says why, none on later starts."""
    old = tmp_path / "old"
    old.mkdir()
    schema = SCHEMA.read_text()
    index = next(line for line in schema.splitlines() if "events_node_seq" in line)
    db = sqlite3.connect(old / "audit.db")
    db.executescript(schema.replace(index, ""))
    db.close()
    caplog.set_level(logging.WARNING, "remoteler.hub.audit")
    for _ in range(2):
        await (await SQLiteAuditLog.open(old)).close()
    assert len([r for r in caplog.records if "building the (node, seq) index" in r.message]) == 1
    await (await SQLiteAuditLog.open(tmp_path / "new")).close()
    assert len([r for r in caplog.records if "index" in r.message]) == 1
