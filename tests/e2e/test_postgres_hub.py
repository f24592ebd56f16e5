"""The core flow with the hub's state in PostgreSQL: real hub, agent, tsh, tctl and server.

One PostgreSQL server per test session (``pg_server``), one database for this
module, one hub on it shared by the tests in order: join, login, ls, ssh,
audit, lock; then a second hub on an empty data dir and the same database
serves the same cluster without any file copied.
"""

from __future__ import annotations

import json
import os
import pwd
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import Cluster, free_port, wait_for
from pgkit import PgServer

from remoteler.caps import AGENT_CAPS

ME = pwd.getpwuid(os.geteuid()).pw_name


#: ``hub start`` arguments of the module's database (set by the fixture)
STORAGE_ARGS: list[str] = []


@pytest.fixture(scope="module")
def pg_cluster(tmp_path_factory: pytest.TempPathFactory, pg_server: PgServer) -> Iterator[Cluster]:
    root = tmp_path_factory.mktemp("pghub")
    passphrase = root / "ca-passphrase"
    passphrase.write_text("a long passphrase for the CA keys\n")
    passphrase.chmod(0o600)
    cluster = Cluster(root, free_port())
    url = pg_server.new_database()
    STORAGE_ARGS[:] = ["--storage", url, "--ca-passphrase-file", str(passphrase)]
    cluster.start_hub(*STORAGE_ARGS)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_state_is_in_postgresql_not_in_the_data_dir(pg_cluster: Cluster) -> None:
    assert pg_cluster.tctl_json("status")["ca_pin"]
    leftovers = sorted(p.name for p in pg_cluster.data.rglob("*.db"))
    assert leftovers == [], leftovers
    assert not (pg_cluster.data / "ca").exists()


def test_join_login_ls_ssh(pg_cluster: Cluster) -> None:
    pg_cluster.add_user("alice", [ME])
    pg_cluster.start_agent("pgdev", "env=pg")
    wait_for(lambda: pg_cluster.node_online("pgdev"), what="pgdev online")
    login = pg_cluster.login("alice")
    assert login.returncode == 0, login.stderr
    nodes = json.loads(pg_cluster.tsh("ls", "--format", "json").stdout)
    assert [(n["name"], n["online"], n["labels"]) for n in nodes] == [
        ("pgdev", True, {"env": "pg"})
    ]
    run = pg_cluster.tsh("ssh", f"{ME}@pgdev", "echo hi; exit 3")
    assert (run.stdout, run.returncode) == ("hi\n", 3), run.stderr


def test_audit_trail_reaches_postgresql(pg_cluster: Cluster) -> None:
    def session_events() -> list[Any]:
        events = pg_cluster.tctl_json("audit", "search", "--node", "pgdev")
        return [e for e in events if e["type"] in ("session.start", "exec", "session.end")]

    found = wait_for(lambda: len(session_events()) >= 3 and session_events(), what="audit")
    assert {e["type"] for e in found} >= {"session.start", "exec", "session.end"}
    logins = pg_cluster.tctl_json("audit", "search", "--type", "user.login", "--user", "alice")
    assert any(e["fields"].get("success") is True for e in logins), logins


def test_lock_refuses_then_unlock(pg_cluster: Cluster) -> None:
    locked = pg_cluster.tctl_json("lock", "--user", "alice", "--message", "pg lock test")
    run = pg_cluster.tsh("ssh", f"{ME}@pgdev", "true")
    assert run.returncode != 0 and "pg lock test" in run.stderr, run.stderr
    lock_id = locked[0]["id"] if isinstance(locked, list) else locked["id"]
    pg_cluster.tctl("unlock", lock_id)
    run = pg_cluster.tsh("ssh", f"{ME}@pgdev", "true")
    assert run.returncode == 0, run.stderr


def test_second_hub_on_empty_data_dir_serves_the_same_cluster(
    pg_cluster: Cluster, tmp_path: Path
) -> None:
    second = Cluster(tmp_path, free_port())
    second.start_hub(*STORAGE_ARGS)
    try:
        assert second.ca_pin() == pg_cluster.ca_pin()
        users = {u["name"] for u in second.tctl_json("users", "ls")}
        assert "alice" in users
        names = {n["name"] for n in second.tctl_json("nodes", "ls")}
        assert "pgdev" in names

        def caps() -> list[str]:  # stored by the first hub's flush (every 5 s)
            nodes = second.tctl_json("nodes", "ls")
            return list(next(n["caps"] for n in nodes if n["name"] == "pgdev"))

        wait_for(lambda: caps() == list(AGENT_CAPS), what="pgdev's caps seen by the second hub")
    finally:
        second.stop()
