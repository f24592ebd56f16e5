"""A hub data dir with a damaged database, end to end: ``hub start`` and ``tctl``.

One real hub for the module: a user, a token and a joined agent (so the node table
and the audit trail have rows), then everything stopped. Each test damages a copy:
``hub start`` exits 1 with one line naming the file (``Storage.check()``, the
lines of hub/storage/sqlite/errors.py), ``tctl`` prints one line and exits 1 for
every command tried, never a traceback and never a hang (a half-opened database's
thread used to keep tctl from exiting).
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from helpers import BIN, Cluster, free_port, stop_process, wait_for

NODE = "db-node"


@pytest.fixture(scope="module")
def pristine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A stopped hub's data dir: one user, one node, audit events."""
    c = Cluster(tmp_path_factory.mktemp("hubdb"), free_port())
    c.start_hub()
    try:
        c.add_user("alice", ["pi"])
        c.start_agent(NODE)
        log = c.root / f"agent-{NODE}.log"
        wait_for(lambda: "tunnel up" in log.read_text(), timeout=30, what="agent's tunnel up")
    finally:
        c.stop()
    yield c.data


def _copy(pristine: Path, tmp_path: Path) -> Path:
    data = tmp_path / "hub"
    shutil.copytree(pristine, data)
    return data


def _damage(path: Path) -> None:
    """Random bytes over every page but the first (the header still says SQLite)."""
    size = path.stat().st_size
    assert size > 8192, (path, size)
    with open(path, "r+b") as f:
        f.seek(4096)
        f.write(os.urandom(size - 4096))


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, capture_output=True, text=True, timeout=30)


def _one_line(proc: subprocess.CompletedProcess[str], prefix: str) -> str:
    assert "Traceback" not in proc.stderr, proc.stderr[-3000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr[-3000:])
    assert lines[0].startswith(prefix), lines[0]
    return lines[0]


def _hub_start(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    addr = f"127.0.0.1:{free_port()}"
    return _run(str(BIN / "hub"), "start", "--data-dir", str(data), "--listen", addr, *extra)


@pytest.mark.parametrize("name", ["hub.db", "audit.db", "firmware/firmware.db"])
def test_hub_start_names_the_damaged_database(pristine: Path, tmp_path: Path, name: str) -> None:
    data = _copy(pristine, tmp_path)
    if name == "firmware/firmware.db":
        (data / name).write_bytes(b"\x00garbage" * 2048)  # small: a garbage whole file
    else:
        _damage(data / name)
    line = _one_line(_hub_start(data), "hub: ")
    assert f"{data / name} is damaged (" in line and "restore it from a backup" in line, line


def test_an_empty_audit_trail_is_refused_unless_accepted(pristine: Path, tmp_path: Path) -> None:
    data = _copy(pristine, tmp_path)
    (data / "audit.db").write_bytes(b"")
    line = _one_line(_hub_start(data), "hub: ")
    assert "audit.db is empty but" in line and "lists 1 node(s)" in line, line
    assert "--accept-empty-audit" in line
    log = tmp_path / "hub.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [str(BIN / "hub"), "start", "--data-dir", str(data), "--listen",
             f"127.0.0.1:{free_port()}", "--accept-empty-audit"],
            stdout=out, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        wait_for(lambda: (data / "hub.addr").exists() or proc.poll() is not None, timeout=30)
        assert proc.poll() is None, log.read_text()[-2000:]
    finally:
        stop_process(proc, signal.SIGTERM)
    assert (data / "audit.db").stat().st_size > 0  # a new trail


TCTL_COMMANDS = [
    ("hub.db", ["users", "ls"]),
    ("hub.db", ["nodes", "ls"]),
    ("hub.db", ["tokens", "add", "--type", "node"]),
    ("hub.db", ["status"]),
    ("hub.db", ["lock", "--user", "alice", "--ttl", "1h"]),
    ("audit.db", ["audit", "search"]),
]


@pytest.fixture(scope="module")
def damaged(pristine: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One copy per damaged file, shared by the tctl commands (which only read or fail)."""
    out = {}
    for name in ("hub.db", "audit.db"):
        data = _copy(pristine, tmp_path_factory.mktemp("damaged"))
        _damage(data / name)
        out[name] = data
    return out


@pytest.mark.parametrize(
    ("name", "argv"), TCTL_COMMANDS, ids=[" ".join(a) for _, a in TCTL_COMMANDS]
)
def test_tctl_on_a_damaged_database_is_one_line(
    damaged: dict[str, Path], name: str, argv: list[str]
) -> None:
    """tctl never opens the database: with the hub refusing to start on the damage, tctl
    says in one line how to start it (and 'hub start' names the damage)."""
    data = damaged[name]
    before = (data / name).read_bytes()
    line = _one_line(_run(str(BIN / "tctl"), "--data-dir", str(data), *argv), "tctl: ")
    assert f"hub is not running: start it with 'hub start --data-dir {data}'" in line, line
    assert (data / name).read_bytes() == before


def test_a_damaged_cluster_json_is_one_line(pristine: Path, tmp_path: Path) -> None:
    data = _copy(pristine, tmp_path)
    (data / "cluster.json").write_text("{garbage")
    line = _one_line(_hub_start(data), "hub: ")
    assert f"{data / 'cluster.json'} is damaged: restore it from a backup" in line, line
    line = _one_line(_run(str(BIN / "tctl"), "--data-dir", str(data), "status"), "tctl: ")
    assert "hub is not running: start it with 'hub start" in line, line


def test_tctl_does_not_paper_over_a_lost_audit_trail(pristine: Path, tmp_path: Path) -> None:
    """``tctl audit search`` (what an admin runs to look into it) used to create a new,
    valid audit.db in place of the lost one, and ``hub start`` then no longer refused."""
    data = _copy(pristine, tmp_path)
    (data / "audit.db").unlink()
    line = _one_line(_run(str(BIN / "tctl"), "--data-dir", str(data), "audit", "search"), "tctl: ")
    assert "hub is not running" in line, line  # tctl opens no database (docs/tctl.md)
    assert not (data / "audit.db").exists()
    line = _one_line(_hub_start(data), "hub: ")
    assert "audit.db is missing but" in line, line
