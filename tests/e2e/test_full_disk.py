"""Full disks with real processes: the agent's data dir on an 8 MiB tmpfs, filled by
the test with a file of its own, then freed. One hub and two agents for the module
(each test leaves them running, in either order).

* A delete that fails after the hub's ack (``SQLITE_FULL``) does not end the
  forwarder: once space is back the backlog drains on the same tunnel, and the
  drain leaves the WAL checkpointed to nothing.
* ``edge-agent health`` says the running agent cannot write its status (disk
  full) instead of calling it healthy or stopped.
* At the reserve, ``refuse-sessions`` refuses a ``tsh ssh`` with one line;
  ``drop-recordings-first`` runs it unrecorded and the drop reaches the hub as an
  ``audit.dropped`` event with its counts, next to the session's end.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import signal
import sqlite3
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import msgpack
import pytest
from helpers import BIN, Cluster, free_port, stop_process, wait_for
from tmpfskit import fill, free_bytes, tmpfs

from edge_agent.health import check
from edge_agent.outbox import Outbox
from remoteler.audit.events import EventType, make_event

ME = pwd.getpwuid(os.geteuid()).pw_name
#: The stuck backlog of the bug report.
N = 129


def query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute(sql, args).fetchall())
    finally:
        db.close()


def outbox_depth(data: Path) -> int:
    return int(query(data / "audit.db", "SELECT count(*) FROM events")[0][0])


def health(data: Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "REMOTELER_AGENT_CONFIG"}
    return subprocess.run(
        [str(BIN / "edge-agent"), "health", "--data-dir", str(data)],
        capture_output=True,
        text=True,
        timeout=30,
        env=env,
    )


def seed(path: Path, node: str, n: int) -> None:
    async def go() -> None:
        box = await Outbox.open(path, node=node)
        try:
            for i in range(n):
                await box.append(
                    make_event(
                        EventType.EXEC, node=node, user="seed", command=f"seed {i}", exit_code=0
                    )
                )
        finally:
            await box.close()

    asyncio.run(go())


STRICT = ("--audit-policy", "refuse-sessions")
LENIENT = ("--audit-policy", "drop-recordings-first")


@pytest.fixture(scope="module")
def disk_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    """One hub for the module, and two agents, each with its data dir on its own 8 MiB
    tmpfs: ``strict`` (refuse-sessions) and ``lenient`` (drop-recordings-first, the
    default). A test that stops or restarts one leaves it running again."""
    root = tmp_path_factory.mktemp("full-disk")
    c = Cluster(root, free_port())
    c.start_hub()
    try:
        with tmpfs(root / "agent-strict"), tmpfs(root / "agent-lenient"):
            try:
                c.start_agent("strict", "", None, *STRICT)
                c.start_agent("lenient", "", None, *LENIENT)
                yield c
            finally:  # before the tmpfs mounts go
                for proc in c.agents.values():
                    stop_process(proc)
                c.agents.clear()
    finally:
        c.stop()


def test_a_failed_delete_after_the_ack_does_not_stop_delivery(disk_cluster: Cluster) -> None:
    cluster = disk_cluster
    data = cluster.root / "agent-lenient"
    log = cluster.root / "agent-lenient.log"
    node = wait_for(lambda: node_ids(cluster, "lenient"), what="lenient online")["lenient"]
    stop_process(cluster.agents.pop("lenient"))
    seed(data / "audit.db", node, N)
    cluster.kill_hub(signal.SIGTERM)
    logged = log.stat().st_size  # this test reads the log from here on
    agent = cluster.start_agent("lenient", "", None, *LENIENT)  # offline: the backlog waits
    wait_for((data / "audit.db-wal").exists, what="the agent to open its outbox")
    filler = fill(data)  # to the last byte
    try:
        cluster.start_hub()
        hub_db = cluster.data / "audit.db"

        def hub_has_all() -> bool:
            rows = query(hub_db, "SELECT count(*) FROM events WHERE user = 'seed'")
            return int(rows[0][0]) == N

        wait_for(hub_has_all, timeout=30, what="the hub to store the backlog")
        time.sleep(1)  # the delete after the ack fails: the backlog stays
        assert outbox_depth(data) >= N
        assert agent.poll() is None
        # B4: running, not hung or stopped: the status file cannot be written.
        wait_for(lambda: check(data, 300, 180) is not None, what="health to turn unhealthy")
        report = health(data)  # the command itself
        assert "running" in report.stderr and "disk" in report.stderr, report.stderr
        assert report.stderr.count("\n") == 1, report.stderr
    finally:
        filler.unlink()
    wait_for(lambda: outbox_depth(data) == 0, timeout=30, what="the backlog to drain")
    text = log.read_bytes()[logged:].decode(errors="replace")
    assert "database or disk is full" in text
    assert text.count("could not delete acked events") == 1, "logged once, not per retry"
    assert text.count("tunnel up") == 1, "drained on the same tunnel, no reconnect"
    # B3: the drain checkpointed the WAL away.
    wait_for(lambda: (data / "audit.db-wal").stat().st_size == 0, what="WAL truncated")
    wait_for(lambda: check(data, 300, 180) is None, what="healthy again")
    stop_process(cluster.agents.pop("lenient"))
    assert "not running" in health(data).stderr
    cluster.start_agent("lenient", "", None, *LENIENT)  # as the module's other tests expect


def _events(cluster: Cluster, node: str, type_: str) -> list[dict[str, Any]]:
    """The node's events of ``type_`` in the hub's ``audit.db`` (read-only, no tctl:
    one process less per poll on a busy machine)."""
    rows = query(
        cluster.data / "audit.db",
        "SELECT session_id, fields FROM events WHERE node = ? AND type = ? ORDER BY seq",
        node,
        type_,
    )
    return [
        {"session": sid, "fields": msgpack.unpackb(f, raw=False, strict_map_key=False)}
        for sid, f in rows
    ]


def node_ids(cluster: Cluster, *names: str) -> dict[str, str] | None:
    """Name -> id once every one of ``names`` is online, else None (one tctl call)."""
    nodes = {n["name"]: n for n in cluster.tctl_json("nodes", "ls")}
    if all(name in nodes and nodes[name]["online"] for name in names):
        return {name: str(nodes[name]["id"]) for name in names}
    return None


def test_sessions_at_the_reserve_are_refused_or_run_unrecorded(disk_cluster: Cluster) -> None:
    cluster = disk_cluster
    cluster.add_user("dora", [ME])
    assert cluster.login("dora").returncode == 0
    strict, lenient = cluster.root / "agent-strict", cluster.root / "agent-lenient"
    ids = wait_for(lambda: node_ids(cluster, "strict", "lenient"), what="both online")
    node = ids["lenient"]
    # (another test of the module may have left notes of its own: only new ones count)
    notes_before = len(_events(cluster, node, "audit.dropped"))
    # Reserve: max(2 MiB, 5 % of 8 MiB) = 2 MiB. Leave 1.5 MiB: inside it.
    fillers = [fill(strict, leave=1536 << 10), fill(lenient, leave=1536 << 10)]
    try:
        assert 1 << 20 < free_bytes(strict) < 2 << 20
        run = cluster.tsh("ssh", f"{ME}@strict", "echo should-not-run")
        assert run.returncode != 0
        assert "should-not-run" not in run.stdout
        line = run.stderr.strip()
        assert "disk is full" in line and "refused" in line, run.stderr
        assert line.count("\n") == 0, run.stderr

        run = cluster.tsh("ssh", f"{ME}@lenient", "seq 1 20000; echo done")
        assert run.returncode == 0, run.stderr
        assert run.stdout.endswith("done\n")
        assert "not recorded" in run.stderr and run.stderr.count("\n") == 1, run.stderr
    finally:
        for filler in fillers:
            filler.unlink()
    ends = wait_for(lambda: _events(cluster, node, "session.end"), what="session.end")
    assert [e["fields"]["exit_status"] for e in ends] == [0]
    session = ends[0]["session"]
    assert not [e for e in _events(cluster, node, "session.data") if e["session"] == session]
    notes = wait_for(
        lambda: _events(cluster, node, "audit.dropped")[notes_before:], what="audit.dropped"
    )  # one per episode: two if the forwarder took the first between two chunks
    assert sum(n["fields"]["dropped"] for n in notes) >= 1
    assert sum(n["fields"]["dropped_bytes"] for n in notes) > 0

    # The disk fills up (another process took the reserve too) during a session:
    # its end cannot be recorded, so it is not reported as a success, and the loss
    # reaches the hub once there is room again.
    marker, full = cluster.root / "started", cluster.root / "full"
    # The session ends once the disk is full (not after a sleep that a loaded machine
    # may outlast before the disk is filled); at most 120 s (filling is slow under load).
    wait = (
        f"touch {marker}; i=0; "
        f"while [ ! -e {full} ] && [ $i -lt 2400 ]; do sleep 0.05; i=$((i+1)); done"
    )
    proc = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@strict", f"{wait}; echo late"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        text=True,
        env=cluster.env(),
    )
    try:
        wait_for(marker.exists, what="the session to start")
        filler = fill(strict)  # to the last byte
        full.touch()
        try:
            out, err = proc.communicate(timeout=60)
        finally:
            filler.unlink()
    finally:
        stop_process(proc)
    assert proc.returncode == 255, (out, err)
    assert "could not record this session's end" in err and err.count("\n") == 1, err
    lost = wait_for(lambda: _events(cluster, ids["strict"], "audit.dropped"), what="the loss")
    assert sum(e["fields"]["dropped"] for e in lost) >= 2  # its exec and session.end
