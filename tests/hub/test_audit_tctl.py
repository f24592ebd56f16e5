"""``tctl audit search/export`` through a hub whose audit store we filled before it started."""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, free_port

from hub.datadir import DataDir
from hub.storage.api import Node
from hub.storage.sqlite import open_sqlite
from remoteler.audit import AuditEvent, EventType, make_event
from tctl import cli as tctl

NOW = time.time()


def _fill(path: Path) -> list[AuditEvent]:
    data = DataDir(path)
    data.init("test")
    start = make_event(
        EventType.SESSION_START, node="x", user="alice", login="pi", session_id="s1", now=NOW - 60
    )
    chunk = make_event(
        EventType.SESSION_DATA,
        node="x",
        user="alice",
        session_id="s1",
        now=NOW - 50,
        chunk=0,
        codec="raw",
        data=b"\x00hello\xff",
    )
    old = make_event(EventType.EXEC, node="x", user="bob", command="id", exit_code=0, now=1000.0)
    login = make_event(EventType.USER_LOGIN, node="hub", user="alice", now=NOW - 70)

    async def fill() -> None:
        storage = await open_sqlite(data.path)
        try:
            await storage.nodes.add(Node(id="id-truck", name="truck-042", joined=NOW))
            await storage.audit.insert_checked(
                "id-truck",
                [dataclasses.replace(start, seq=1), dataclasses.replace(chunk, seq=2)],
            )
            await storage.audit.insert_checked("id-gone", [dataclasses.replace(old, seq=7)])
            await storage.audit.record(login)
        finally:
            await storage.close()

    asyncio.run(fill())
    return [old, login, start, chunk]


@pytest.fixture(scope="module")
def filled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, list[AuditEvent]]]:
    """A hub on a data dir filled before it started (tctl reads it through the hub)."""
    cluster = Cluster(tmp_path_factory.mktemp("audit"), free_port())
    events = _fill(cluster.data)
    cluster.start_hub()
    try:
        yield cluster.data, events
    finally:
        cluster.stop()


def _run(capsys: pytest.CaptureFixture[str], path: Path, *argv: str) -> str:
    assert tctl.main(["--data-dir", str(path), "audit", *argv]) == 0
    return capsys.readouterr().out


def test_search_json_shape(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path, (old, login, start, chunk) = filled
    out = json.loads(_run(capsys, tmp_path, "search", "--format", "json"))
    assert [e["id"] for e in out] == [old.id, login.id, start.id, chunk.id]
    keys = {"id", "type", "time", "node", "user", "login", "session", "seq", "fields"}
    assert all(set(e) == keys for e in out)
    assert out[3]["node"] == "id-truck" and out[3]["seq"] == 2
    assert out[3]["fields"] == {
        "chunk": 0,
        "codec": "raw",
        "data_b64": base64.b64encode(b"\x00hello\xff").decode(),
    }
    assert out[1]["node"] == "hub"

    by_name = json.loads(
        _run(capsys, tmp_path, "search", "--node", "truck-042", "--format", "json")
    )
    assert [e["id"] for e in by_name] == [start.id, chunk.id]
    by_id = json.loads(_run(capsys, tmp_path, "search", "--node", "id-gone", "--format", "json"))
    assert [e["id"] for e in by_id] == [old.id]
    recent = json.loads(
        _run(capsys, tmp_path, "search", "--since", "1h", "--user", "alice", "--format", "json")
    )
    assert [e["id"] for e in recent] == [login.id, start.id, chunk.id]
    typed = json.loads(
        _run(
            capsys,
            tmp_path,
            "search",
            "--type",
            "exec",
            "--until",
            "1970-01-02T00:00:00+00:00",
            "--format",
            "json",
        )
    )
    assert [e["id"] for e in typed] == [old.id]
    limited = json.loads(_run(capsys, tmp_path, "search", "--limit", "1", "--format", "json"))
    assert [e["id"] for e in limited] == [chunk.id]  # the newest


def test_limit_keeps_the_newest_printed_oldest_first(
    filled: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    tmp_path, (old, login, start, chunk) = filled

    def ids(*argv: str) -> list[str]:
        return [e["id"] for e in json.loads(_run(capsys, tmp_path, *argv, "--format", "json"))]

    assert ids("search", "--limit", "2") == [start.id, chunk.id]
    assert ids("search", "--limit", "2", "--order", "asc") == [old.id, login.id]
    assert ids("search", "--limit", "99") == [old.id, login.id, start.id, chunk.id]
    exported = _run(capsys, tmp_path, "export", "--limit", "3").splitlines()
    assert [json.loads(line)["id"] for line in exported] == [login.id, start.id, chunk.id]
    table = _run(capsys, tmp_path, "search", "--limit", "1").splitlines()
    assert len(table) == 3 and "session.data" in table[2]  # header, rule, the newest


def test_search_text_table(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path, _ = filled
    out = _run(capsys, tmp_path, "search")
    lines = out.splitlines()
    assert lines[0].split() == ["Time", "Type", "Node", "User", "Login", "Session", "Fields"]
    assert "truck-042" in out and "id-truck" not in out
    assert "data=<7 bytes>" in out and "hello" not in out


def test_export_json_lines(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path, events = filled
    lines = _run(capsys, tmp_path, "export").splitlines()
    assert [json.loads(line)["id"] for line in lines] == [e.id for e in events]
    chunk = json.loads(lines[3])
    assert base64.b64decode(chunk["fields"]["data_b64"]) == b"\x00hello\xff"
    assert len(_run(capsys, tmp_path, "export", "--type", "session.start").splitlines()) == 1


def test_bad_time_is_a_usage_error(filled: Any, capsys: pytest.CaptureFixture[str]) -> None:
    tmp_path, _ = filled
    assert tctl.main(["--data-dir", str(tmp_path), "audit", "search", "--since", "yesterday"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tctl: bad time 'yesterday'") and err.count("\n") == 1


def test_parse_when() -> None:
    assert tctl.parse_when("2h", now=10_000.0) == 10_000.0 - 7200
    assert tctl.parse_when("1970-01-01T01:00:00+00:00") == 3600.0


def test_session_takes_the_short_id_the_table_shows(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``--session 3f2a9c1e`` (the table's 8 characters) finds the session, as ``tsh play``
    does; a whole id that is also the start of another (its ``-2`` channel) is exact."""
    cluster = Cluster(tmp_path, free_port())
    data = DataDir(cluster.data)
    data.init("test")
    first, other = "3f2a9c1e-0000-4000-8000-000000000001", "3f2a0000-0000-4000-8000-000000000002"

    def ev(sid: str, user: str) -> AuditEvent:
        return make_event(EventType.SESSION_START, node="x", user=user, session_id=sid, now=NOW)

    async def fill() -> None:
        storage = await open_sqlite(data.path)
        events = [ev(first, "alice"), ev(first + "-2", "alice"), ev(other, "bob")]
        try:
            await storage.audit.insert_checked(
                "n", [dataclasses.replace(e, seq=i) for i, e in enumerate(events)]
            )
        finally:
            await storage.close()

    asyncio.run(fill())
    cluster.start_hub()
    try:

        def sessions(*argv: str) -> list[str]:
            out = _run(capsys, cluster.data, "search", *argv, "--format", "json")
            return [e["session"] for e in json.loads(out)]

        assert sessions("--session", other[:8]) == [other]
        assert sessions("--session", first) == [first]  # exact, not ambiguous with first-2
        assert sessions("--session", first + "-2") == [first + "-2"]
        assert sessions("--session", "ffff") == []
        argv = ["--data-dir", str(cluster.data), "audit", "search", "--session", "3f2a"]
        assert tctl.main(argv) == 2
        err = capsys.readouterr().err
        assert "matches several sessions" in err and err.count("\n") == 1
    finally:
        cluster.stop()
