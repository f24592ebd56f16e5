"""The per-node audit quota with real processes: ``hub start --node-audit-rate/-burst``
and a real ``edge-agent`` whose outbox holds more events than the quota lets through.

The hub's ``audit.db`` and the agent's outbox are read with :mod:`sqlite3` in
read-only mode while their owners run (as tests/e2e/test_audit_delivery.py does).
"""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

from helpers import BIN, Cluster, free_port, wait_for
from outboxkit import seed_outbox

#: Seeded backlog, burst and rate: the burst is stored at once, the other 200 events
#: at 100/s, so the drain takes ~2 s in retry-after steps of ~1 s.
N = 300
BURST = 100
RATE_PER_MIN = 6000


def _query(path: Path, sql: str, *args: Any) -> list[tuple[Any, ...]]:
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)
    try:
        return list(db.execute(sql, args).fetchall())
    finally:
        db.close()


def _seeded_in_hub(cluster: Cluster, node_id: str) -> int:
    sql = "SELECT count(*) FROM events WHERE node = ? AND type = 'exec' AND user = 'seed'"
    return int(_query(cluster.data / "audit.db", sql, node_id)[0][0])


def _outbox_depth(cluster: Cluster, name: str) -> int:
    path = cluster.root / f"agent-{name}" / "audit.db"
    return int(_query(path, "SELECT count(*) FROM events WHERE type = 'exec'")[0][0])


def _seed(path: Path, node_id: str, n: int) -> set[str]:
    return set(seed_outbox(path, node_id, n))


def test_agent_over_its_quota_drains_everything_exactly_once(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path, free_port())
    try:
        cluster.start_hub("--node-audit-rate", str(RATE_PER_MIN), "--node-audit-burst", str(BURST))
        drain_over_quota(cluster)
    finally:
        cluster.stop()


def drain_over_quota(cluster: Cluster) -> None:
    cluster.start_agent("dev1")
    ident = cluster.root / "agent-dev1" / "identity" / "node.json"
    wait_for(ident.exists, what="dev1 joined")  # written last: the identity is complete
    node_id = str(json.loads(ident.read_text())["node_id"])
    agent = cluster.agents.pop("dev1")
    os.kill(agent.pid, signal.SIGTERM)
    assert agent.wait(timeout=20) in (0, -signal.SIGTERM)  # it may not have set its handler
    seeded = _seed(cluster.root / "agent-dev1" / "audit.db", node_id, N)

    cluster.start_agent("dev1")
    # The hub stores the burst; meanwhile the rest waits in the agent's outbox.
    wait_for(lambda: _seeded_in_hub(cluster, node_id) >= BURST, 30, what="the burst stored")
    held = _outbox_depth(cluster, "dev1")
    stored = _seeded_in_hub(cluster, node_id)
    assert stored < N and held > 0, (stored, held)
    wait_for(lambda: _seeded_in_hub(cluster, node_id) == N, 60, 0.2, what="all events stored")
    wait_for(lambda: _outbox_depth(cluster, "dev1") == 0, 30, what="the outbox emptied")

    found = cluster.tctl_json("audit", "search", "--node", node_id, "--type", "exec")
    counts = Counter(e["id"] for e in found if e["user"] == "seed")
    assert set(counts) == seeded and set(counts.values()) == {1}
    logs = cluster.all_logs()
    assert "audit quota reached" in logs  # the hub, once per channel
    assert "hub audit quota" in logs  # the agent, waiting out a retry-after
    assert "ignores its quota" not in logs


def test_bad_quota_flags_are_one_line_errors(tmp_path: Path) -> None:
    for flags in (["--node-audit-rate", "-1"],):  # QuotaConfig's checks: test_audit_quota.py
        proc = subprocess.run(
            [str(BIN / "hub"), "start", "--data-dir", str(tmp_path / "hub"), *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert proc.returncode != 0
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and "--node-audit-rate / --node-audit-burst" in lines[0], lines
        assert not (tmp_path / "hub").exists()  # refused before anything was created
