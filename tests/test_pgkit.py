"""tests/pgkit.py: the PostgreSQL server the storage tests share."""

from __future__ import annotations

import pgkit
import psycopg
import pytest
from pgkit import PASSWORD, PgServer


def test_a_new_database_is_empty_and_reachable_without_password(pg_server: PgServer) -> None:
    url = pg_server.new_database()
    assert ":" not in url.split("//", 1)[1].split("@", 1)[0]  # no password in the URL
    with psycopg.connect(url) as conn:
        row = conn.execute(
            "SELECT current_database(), count(*) FROM pg_tables WHERE schemaname = 'public'"
        ).fetchone()
    assert row is not None and row[1] == 0
    assert url.endswith("/" + row[0])
    assert pg_server.new_database() != url


def test_the_password_user_needs_its_password(pg_server: PgServer) -> None:
    url = pg_server.new_database(password=True)
    assert pgkit.PASSWORD_USER in url and PASSWORD not in url
    with pytest.raises(psycopg.OperationalError, match="no password"):
        psycopg.connect(url).close()
    with psycopg.connect(url, password=PASSWORD) as conn:
        assert conn.execute("SELECT current_user").fetchone() == (pgkit.PASSWORD_USER,)


def test_stop_kills_the_server_and_removes_its_files() -> None:
    server = PgServer.start()
    pid = server.pid()
    assert pid is not None and server.startup > 0
    server.stop()
    assert not server.root.exists()
    assert not pgkit.alive(pid)


def test_missing_binaries_fail_with_one_line_naming_the_package(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pgkit.glob, "glob", lambda pattern: [])
    with pytest.raises(pytest.fail.Exception) as failed:
        PgServer.start()
    assert str(failed.value) == (
        "initdb is not installed: apt-get install postgresql (.ci/run installs it)"
    )
