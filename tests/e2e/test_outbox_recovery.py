"""A real agent over a damaged, emptied or deleted ``audit.db``: it starts, stays
reachable with ``tsh ssh``, and tells the real hub (``audit.corrupt``, ``audit.gap``),
numbering its events after every seq the hub already holds.

One hub and one agent for the module; each test stops the agent, damages its
outbox, starts it again.
"""

from __future__ import annotations

import json
import os
import pwd
import sqlite3
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import Cluster, free_port, stop_process, wait_for

from edge_agent.health import read_status

ME = pwd.getpwuid(os.geteuid()).pw_name
NAME = "dev1"
#: A generous bound for each wait (2 loaded cores): a correctness bound, never a speed one.
LOADED = 60.0


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("recovery"), free_port())
    c.start_hub()
    try:
        c.add_user("rita", [ME])
        assert c.login("rita").returncode == 0
        _start(c, ssh=False)
        yield c
    finally:
        c.stop()


def _data(cluster: Cluster) -> Path:
    return cluster.root / f"agent-{NAME}"


def _node_id(cluster: Cluster) -> str:
    return str(json.loads((_data(cluster) / "identity" / "node.json").read_text())["node_id"])


def _pending(cluster: Cluster) -> int:
    db = sqlite3.connect(f"file:{_data(cluster) / 'audit.db'}?mode=ro", uri=True, timeout=10)
    try:
        return int(db.execute("SELECT count(*) FROM events").fetchone()[0])
    finally:
        db.close()


def _device_events(cluster: Cluster) -> list[dict[str, Any]]:
    """The node's own events in the hub's audit.db (read-only; the hub is running)."""
    db = sqlite3.connect(f"file:{cluster.data / 'audit.db'}?mode=ro", uri=True, timeout=10)
    try:
        rows = db.execute(
            "SELECT id, type, seq, fields FROM events WHERE node = ? AND seq > 0",
            (_node_id(cluster),),
        ).fetchall()
    finally:
        db.close()
    return [
        {"id": i, "type": t, "seq": s, "fields": msgpack.unpackb(f, raw=False)}
        for i, t, s, f in rows
    ]


def _start(cluster: Cluster, ssh: bool = True) -> None:
    """Start the agent and wait until its tunnel is up and (``ssh``) ``tsh ssh`` works."""
    proc = cluster.start_agent(NAME)

    def up() -> bool:
        status = read_status(_data(cluster))
        assert proc.poll() is None, f"the agent exited: {cluster.all_logs()[-2000:]}"
        return status is not None and status.pid == proc.pid and status.tunnel_up

    wait_for(up, timeout=LOADED, what="the agent's tunnel up")
    if ssh:
        wait_for(lambda: _ssh_works(cluster), timeout=LOADED, what="tsh ssh to reach the agent")


def _ssh_works(cluster: Cluster) -> bool:
    run = cluster.tsh("ssh", f"{ME}@{NAME}", "echo reachable")
    return run.returncode == 0 and run.stdout == "reachable\n"


def _restart_after(cluster: Cluster, damage: Callable[[Path], None], want: str) -> dict[str, Any]:
    """Deliver everything, stop the agent, damage its outbox, start it; return the
    ``want`` event once the hub has it (after checking the agent is reachable)."""
    # the tunnel.connect event is written once the hub's id is known (its hubs push,
    # at most 3 s after the tunnel is up): delivered means that one too
    before = wait_for(
        lambda: _pending(cluster) == 0 and _device_events(cluster),
        timeout=LOADED,
        what="the outbox delivered",
    )
    stop_process(cluster.agents[NAME])
    damage(_data(cluster) / "audit.db")
    _start(cluster)
    old = {e["id"] for e in before}
    (event,) = wait_for(
        lambda: [e for e in _device_events(cluster) if e["type"] == want and e["id"] not in old],
        timeout=LOADED,
        what=f"{want} at the hub",
    )
    assert event["seq"] > max(e["seq"] for e in before)
    after = _device_events(cluster)
    seqs = [e["seq"] for e in after]
    assert len(seqs) == len(set(seqs)), "a seq stored twice for the node"
    return dict(event)


def _garbage(path: Path) -> None:
    path.with_name("audit.db-wal").unlink(missing_ok=True)
    path.with_name("audit.db-shm").unlink(missing_ok=True)
    path.write_bytes(GARBAGE)


GARBAGE = os.urandom(16 << 10)


def test_garbage_outbox_is_set_aside_and_reported(cluster: Cluster) -> None:
    event = _restart_after(cluster, _garbage, "audit.corrupt")
    fields = event["fields"]
    assert fields["events_salvaged"] == 0 and fields["pages"] == fields["pages_lost"] == 4
    aside = _data(cluster) / fields["moved_to"]
    assert aside.name.startswith("audit.db.corrupt-") and aside.read_bytes() == GARBAGE


def test_emptied_outbox_is_reported_as_a_gap(cluster: Cluster) -> None:
    event = _restart_after(cluster, lambda p: os.truncate(p, 0), "audit.gap")
    assert event["fields"]["reason"] == "empty"
    assert event["fields"]["resumed_at"] == event["seq"]


def test_deleted_outbox_is_reported_as_a_gap(cluster: Cluster) -> None:
    def delete(path: Path) -> None:
        for name in ("audit.db", "audit.db-wal", "audit.db-shm"):
            path.with_name(name).unlink(missing_ok=True)

    event = _restart_after(cluster, delete, "audit.gap")
    assert event["fields"]["reason"] == "missing"
