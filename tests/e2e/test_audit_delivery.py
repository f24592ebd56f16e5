"""Audit delivery with real processes: offline access through ``--local-listen`` with
real OpenSSH, and kill -9 of the agent or of the hub while a backlog drains.

The hub's ``audit.db`` and the agent's outbox are read with :mod:`sqlite3` in
read-only mode, only while the process that owns the file is alive (a read-only
connection cannot recover the WAL of a killed writer).
"""

from __future__ import annotations

import os
import pwd
import signal
import sqlite3
import subprocess
import time
from collections import Counter, defaultdict
from itertools import pairwise
from pathlib import Path
from typing import Any

from helpers import Cluster, free_port, wait_for
from outboxkit import seed_outbox

ME = pwd.getpwuid(os.geteuid()).pw_name
HUB_TYPES = {"join", "user.login", "cert.create"}
#: Seeded backlog: enough events, and big enough ones (the forwarder caps a batch
#: at 512 KiB), that the drain takes many batches and a kill lands in the middle.
N = 3000
PAD = 1500


# -- helpers ----------------------------------------------------------------------


def _query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute(sql, args).fetchall())
    finally:
        db.close()


def _hub_db(cluster: Cluster) -> Path:
    return cluster.data / "audit.db"


def _outbox_path(cluster: Cluster, name: str) -> Path:
    return cluster.root / f"agent-{name}" / "audit.db"


def _seeded_in_hub(cluster: Cluster, node_id: str) -> int:
    """Rows of the seeded type (``exec`` with user ``seed``) the hub holds for the node."""
    rows = _query(
        _hub_db(cluster),
        "SELECT count(*) FROM events WHERE node = ? AND type = 'exec' AND user = 'seed'",
        node_id,
    )
    return int(rows[0][0])


def _outbox_depth(cluster: Cluster, name: str) -> int:
    return int(_query(_outbox_path(cluster, name), "SELECT count(*) FROM events")[0][0])


def _node_id(cluster: Cluster, name: str) -> str:
    nodes = cluster.tctl_json("nodes", "ls")
    return str(next(n["id"] for n in nodes if n["name"] == name))


def _join_then_stop(cluster: Cluster, name: str) -> str:
    """First start (join), wait until online, stop cleanly; return the node id."""
    cluster.start_agent(name)
    wait_for(lambda: cluster.node_online(name), what=f"{name} online")
    node_id = _node_id(cluster, name)
    agent = cluster.agents.pop(name)
    os.kill(agent.pid, signal.SIGTERM)
    assert agent.wait(timeout=20) == 0
    return node_id


def _seed(path: Path, node_id: str, n: int) -> dict[str, int]:
    """Append ``n`` exec events to the (stopped) agent's outbox; return id -> seq."""
    seeded = seed_outbox(path, node_id, n, PAD)
    assert len(seeded) == n and all(seq > 0 for seq in seeded.values())
    assert len(set(seeded.values())) == n
    return seeded


def _wait_mid_drain(cluster: Cluster, node_id: str, above: int, what: str) -> int:
    """Poll tightly until the hub holds more than ``above`` but fewer than N seeded events."""
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        count = _seeded_in_hub(cluster, node_id)
        if above < count < N:
            return count
        assert count < N, f"{what}: the backlog drained before a kill could land (saw {count})"
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what} (hub holds {count} of {N})")


def _assert_all_once(cluster: Cluster, node_id: str, seeded: dict[str, int]) -> None:
    rows = _query(
        _hub_db(cluster),
        "SELECT id, count(*), min(seq), max(seq), count(DISTINCT node) FROM events"
        " WHERE user = 'seed' AND type = 'exec' GROUP BY id",
    )
    counts = {r[0]: r[1] for r in rows}
    assert set(counts) == set(seeded), (
        f"lost {len(set(seeded) - set(counts))}, unexpected {len(set(counts) - set(seeded))}"
    )
    assert all(r[1] == 1 and r[4] == 1 for r in rows), "an id stored more than once"
    assert {r[0]: r[2] for r in rows} == seeded, "seq changed on the way"
    assert _seeded_in_hub(cluster, node_id) == N
    assert not _query(
        _hub_db(cluster),
        "SELECT seq FROM events WHERE node = ? GROUP BY seq HAVING count(*) > 1",
        node_id,
    ), "two events of the node share a seq"


def _kill9(proc: subprocess.Popen[Any]) -> None:
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=10)


# -- 1. offline technician ------------------------------------------------------------


def _openssh(
    ident: Path, known_hosts: Path, port: int, alias: str, command: str
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "SSH_AUTH_SOCK"}
    return subprocess.run(
        [
            "ssh",
            "-F",
            "/dev/null",
            "-i",
            str(ident),
            "-o",
            "IdentitiesOnly=yes",
            "-o",
            f"UserKnownHostsFile={known_hosts}",
            "-o",
            "GlobalKnownHostsFile=/dev/null",
            "-o",
            f"HostKeyAlias={known_hosts.read_text().split()[1].replace('*', alias, 1)}",
            "-o",
            "StrictHostKeyChecking=yes",
            "-o",
            "BatchMode=yes",
            "-o",
            "ConnectTimeout=10",
            "-p",
            str(port),
            f"{ME}@127.0.0.1",
            command,
        ],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=30,
    )


def test_offline_local_access_arrives_exactly_once_in_order(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.add_user("tech", [ME])
    port = free_port()
    cluster.start_agent("dev1", "", None, "--local-listen", f"127.0.0.1:{port}")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    node_id = _node_id(cluster, "dev1")
    ident = tmp_path / "tech"
    cluster.tctl("auth", "sign", "--user", "tech", "--ttl", "1h", "-o", str(ident))
    assert Path(f"{ident}-cert.pub").exists()
    known_hosts = tmp_path / "known_hosts"
    known_hosts.write_text(cluster.tctl("auth", "export", "--type", "host").stdout)
    assert known_hosts.read_text().startswith("@cert-authority ")

    cluster.kill_hub(signal.SIGTERM)

    commands = [
        ("echo one", "one\n", 0),
        ("printf 'two\\nlines\\n'; exit 3", "two\nlines\n", 3),
        ("true", "", 0),
    ]
    for command, out, code in commands:
        run = _openssh(ident, known_hosts, port, "dev1", command)
        assert (run.stdout, run.returncode) == (out, code), run.stderr
    # the host check is real: a wrong alias is not a principal of the host certificate
    wrong = _openssh(ident, known_hosts, port, "someone-else", "true")
    assert wrong.returncode == 255 and wrong.stdout == ""
    assert _outbox_depth(cluster, "dev1") > 0, "nothing waiting on the device"

    cluster.start_hub()

    def arrived() -> list[dict[str, Any]] | None:
        found: list[dict[str, Any]] = cluster.tctl_json(
            "audit", "search", "--node", "dev1", "--limit", "100000"
        )
        ends = [e for e in found if e["type"] == "session.end" and e["user"] == "tech"]
        return found if len(ends) == len(commands) else None

    wait_for(arrived, timeout=30, interval=0.2, what="the offline sessions at the hub")
    wait_for(lambda: _outbox_depth(cluster, "dev1") == 0, timeout=30, what="outbox drained")
    events = arrived()
    assert events is not None

    device = [e for e in events if e["type"] not in HUB_TYPES]
    assert all(e["node"] == node_id for e in events)
    ids = Counter(e["id"] for e in events)
    assert all(n == 1 for n in ids.values()), [i for i, n in ids.items() if n > 1]
    seqs = sorted(e["seq"] for e in device)
    assert seqs[0] >= 1 and all(a < b for a, b in pairwise(seqs)), seqs

    sessions: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in sorted(device, key=lambda e: e["seq"]):
        if e["user"] == "tech":
            sessions[e["session"]].append(e)
    assert len(sessions) == len(commands)
    ordered = sorted(sessions.values(), key=lambda evs: evs[0]["seq"])
    for (command, out, code), evs in zip(commands, ordered, strict=True):
        types = [e["type"] for e in evs]
        data = [e for e in evs if e["type"] == "session.data"]
        expected = ["session.start"] + ["session.data"] * len(data) + ["exec", "session.end"]
        assert types == expected, (command, types)
        assert bool(data) == bool(out), (command, types)
        assert all(e["login"] == ME and e["user"] == "tech" for e in evs)
        assert evs[0]["fields"]["via"] == "local"  # recorded offline: the console marks it
        assert evs[-2]["fields"]["command"] == command
        assert evs[-2]["fields"]["exit_code"] == code
        assert evs[-1]["fields"]["exit_status"] == code
        assert evs[-1]["fields"]["bytes_out"] == len(out.encode())
    # sessions ran one after another: their events do not interleave
    for before, after in pairwise(ordered):
        assert before[-1]["seq"] < after[0]["seq"]


# -- 2. kill -9 of the agent mid-backlog ---------------------------------------------


def test_agent_sigkill_while_forwarding_backlog_loses_and_duplicates_nothing(
    cluster: Cluster,
) -> None:
    node_id = _join_then_stop(cluster, "dev2")
    seeded = _seed(_outbox_path(cluster, "dev2"), node_id, N)
    assert _seeded_in_hub(cluster, node_id) == 0

    agent = cluster.start_agent("dev2")
    partial = _wait_mid_drain(cluster, node_id, 0, "agent forwarding the backlog")
    _kill9(agent)
    assert _seeded_in_hub(cluster, node_id) < N, "killed mid-drain"

    cluster.start_agent("dev2")
    wait_for(lambda: _seeded_in_hub(cluster, node_id) == N, timeout=60, what="all N at the hub")
    wait_for(lambda: _outbox_depth(cluster, "dev2") == 0, timeout=30, what="outbox drained")
    _assert_all_once(cluster, node_id, seeded)
    assert partial > 0


# -- 3. kill -9 of the hub mid-ingest --------------------------------------------------


def test_hub_sigkill_during_ingest_loses_and_duplicates_nothing(cluster: Cluster) -> None:
    node_id = _join_then_stop(cluster, "dev3")
    seeded = _seed(_outbox_path(cluster, "dev3"), node_id, N)

    agent = cluster.start_agent("dev3")
    seen = 0
    for round_ in range(2):
        seen = _wait_mid_drain(cluster, node_id, seen, f"hub ingest, round {round_ + 1}")
        cluster.kill_hub(signal.SIGKILL)
        cluster.start_hub()
        assert _seeded_in_hub(cluster, node_id) >= seen, "a committed batch was lost"

    wait_for(lambda: _seeded_in_hub(cluster, node_id) == N, timeout=60, what="all N at the hub")
    wait_for(lambda: _outbox_depth(cluster, "dev3") == 0, timeout=30, what="outbox drained")
    assert agent.poll() is None, "the same agent process rode out both hub kills"
    _assert_all_once(cluster, node_id, seeded)
