"""``edge-agent health``: the status file's rules (time passed in) and the real command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from edge_agent.health import Status, StatusWriter, read_status, verdict, write_status

BIN = Path(sys.executable).parent


def test_a_tunnel_down_longer_than_max_down_is_unhealthy() -> None:
    up = Status(tunnel_up=True, since=0.0, updated=1000.0, pid=1)
    assert verdict(up, now=1010.0, max_down=300, stale_after=180) is None
    down = Status(tunnel_up=False, since=900.0, updated=1000.0, pid=1)
    assert verdict(down, now=1010.0, max_down=300, stale_after=180) is None  # 110 s down
    problem = verdict(down, now=1100.0, max_down=100, stale_after=180)
    assert problem is not None and "down for 200 s" in problem


def test_a_status_not_refreshed_is_unhealthy_even_if_up() -> None:
    up = Status(tunnel_up=True, since=0.0, updated=1000.0, pid=42)
    problem = verdict(up, now=1181.0, max_down=300, stale_after=180)
    assert problem is not None and "hung" in problem
    assert verdict(None, now=0, max_down=1, stale_after=1) is not None


def test_the_writer_writes_on_change_and_every_refresh() -> None:
    w = StatusWriter(now=100.0, refresh=60.0)
    first = w.observe(False, 100.0)
    assert first is not None and not first.tunnel_up and first.since == 100.0
    assert w.observe(False, 101.0) is None
    up = w.observe(True, 102.0)
    assert up is not None and up.tunnel_up and up.since == 102.0
    assert w.observe(True, 150.0) is None
    again = w.observe(True, 162.0)
    assert again is not None and again.since == 102.0 and again.updated == 162.0


def run_health(data: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "edge-agent"), "health", "--data-dir", str(data), *extra],
        capture_output=True,
        text=True,
        timeout=30,
        env={k: v for k, v in os.environ.items() if k != "REMOTELER_AGENT_CONFIG"},
    )


def test_the_health_command_reads_the_status_file(tmp_path: Path) -> None:
    import time

    proc = run_health(tmp_path)
    assert proc.returncode == 1 and "not running" in proc.stderr
    now = time.time()
    write_status(tmp_path, Status(True, now - 5, now, os.getpid()))
    assert read_status(tmp_path) is not None
    proc = run_health(tmp_path)
    assert proc.returncode == 0, proc.stderr
    write_status(tmp_path, Status(False, now - 500, now, os.getpid()))
    proc = run_health(tmp_path, "--max-down", "60")
    assert proc.returncode == 1 and re.search(r"down for 50\d s \(over 60 s\)", proc.stderr)
    assert proc.stderr.count("\n") == 1
    dead = subprocess.Popen(["true"])
    dead.wait()
    write_status(tmp_path, Status(True, now, now, dead.pid))
    proc = run_health(tmp_path)
    assert proc.returncode == 1 and "gone" in proc.stderr
    conf = tmp_path / "agent.toml"
    conf.write_text(f'data-dir = "{tmp_path / "elsewhere"}"\n')
    proc = run_health(tmp_path, "--config", str(conf))  # --data-dir wins over the file
    assert proc.returncode == 1 and "gone" in proc.stderr
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    write_status(elsewhere, Status(True, now, time.time(), os.getpid()))
    cmd = [str(BIN / "edge-agent"), "health", "--config", str(conf)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr  # the data dir came from the config file


def test_a_full_disk_is_told_from_a_stopped_agent(tmp_path: Path) -> None:
    """The atomic rewrite fails on a full disk: the agent rewrites in place with
    ``disk_full``, and health says it runs but cannot write its status."""
    import time

    from tmpfskit import fill, tmpfs

    from edge_agent.health import write_status_in_place

    with tmpfs(tmp_path / "data", 1 << 20) as data:
        now = time.time()
        write_status(data, Status(True, now, now, os.getpid()))
        filler = fill(data)
        try:
            try:
                write_status(data, Status(True, now, now + 1, os.getpid()))
                raise AssertionError("the atomic rewrite should fail on a full disk")
            except OSError:
                pass
            write_status_in_place(data, Status(True, now, now + 1, os.getpid(), disk_full=True))
            status = read_status(data)
            assert status is not None and status.disk_full and status.updated == now + 1
            proc = run_health(data)
            assert proc.returncode == 1 and proc.stderr.count("\n") == 1, proc.stderr
            assert "is running" in proc.stderr and "not writable" in proc.stderr
            assert "full" in proc.stderr
            # An older file (not rewritten, gone stale) on a full disk: still "running".
            write_status_in_place(data, Status(True, now - 999, now - 999, os.getpid()))
            proc = run_health(data)
            assert proc.returncode == 1 and "is running" in proc.stderr, proc.stderr
            (data / "status.json").unlink()
            proc = run_health(data)
            assert proc.returncode == 1 and "not running" in proc.stderr
            assert "disk is full" in proc.stderr, proc.stderr
        finally:
            filler.unlink()


def test_an_in_place_rewrite_never_leaves_the_tail_of_a_longer_file(tmp_path: Path) -> None:
    """A status file longer than 512 bytes (a version with more fields, or a status
    that grew) overwritten in place by a shorter one: the old tail must not stay
    behind the new JSON, or readers find no status and call the agent stopped."""
    import json
    import time

    from edge_agent.health import write_status_in_place

    now = time.time()
    doc = {"tunnel_up": True, "since": now, "updated": now, "pid": os.getpid(), "x": "y" * 600}
    (tmp_path / "status.json").write_text(json.dumps(doc))
    write_status_in_place(tmp_path, Status(True, now, now + 1, os.getpid(), disk_full=True))
    status = read_status(tmp_path)
    assert status is not None and status.disk_full and status.updated == now + 1
    assert (tmp_path / "status.json").stat().st_size == len(json.dumps(doc))  # no new block
