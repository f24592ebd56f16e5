"""The hub's recording proxy through real processes: an embedded-server node and a
legacy OpenSSH sshd behind a forward-mode agent, each set to ``--recording proxy``."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import subprocess
from typing import Any

import pytest
from helpers import BIN, Cluster, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
TMUX = shutil.which("tmux")


def _hub_sessions(cluster: Cluster, user: str) -> list[dict[str, Any]]:
    """session.start events the hub recorded itself for ``user``."""
    return [
        e
        for e in cluster.tctl_json("audit", "search", "--type", "session.start", "--user", user)
        if e["fields"].get("recorded_by") == "hub"
    ]


def _session(cluster: Cluster, session_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = cluster.tctl_json("audit", "search", "--session", session_id)
    return events


def _proxy(cluster: Cluster, node: str) -> None:
    out = cluster.tctl("nodes", "set", node, "--recording", "proxy").stdout
    assert "recording proxy" in out


def test_embedded_node_in_proxy_mode_records_at_the_hub(cluster: Cluster) -> None:
    cluster.add_user("rita", [ME])
    cluster.start_agent("dev1", "env=lab")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    assert cluster.login("rita").returncode == 0
    _proxy(cluster, "dev1")

    listed = json.loads(cluster.tsh("ls", "--format", "json").stdout)
    assert [n["recording"] for n in listed] == ["proxy"]
    table = cluster.tsh("ls").stdout
    assert "Recording" in table and "proxy" in table
    assert cluster.tctl_json("nodes", "ls")[0]["recording"] == "proxy"

    run = cluster.tsh("ssh", f"{ME}@dev1", "echo hi; echo oops >&2; exit 3")
    assert run.returncode == 3, run.stderr
    assert run.stdout == "hi\n" and "oops" in run.stderr

    starts = _hub_sessions(cluster, "rita")
    assert len(starts) == 1
    start = starts[0]
    assert start["node"] == "hub" and start["fields"]["node_name"] == "dev1"
    session_id = start["session"]
    events = _session(cluster, session_id)
    types = [e["type"] for e in events]
    assert types[0] == "session.start" and types[-1] == "session.end", types
    end = events[-1]["fields"]
    assert end["exit_status"] == 3 and end["recorded_by"] == "hub"
    assert next(e for e in events if e["type"] == "exec")["fields"]["exit_code"] == 3

    played = cluster.tsh("play", session_id, "--format", "text")
    assert played.returncode == 0, played.stderr
    assert sorted(played.stdout.splitlines()) == ["hi", "oops"]

    # the device recorded its side too, under its own session id
    device = start["fields"]["device_session"]
    wait_for(
        lambda: any(e["type"] == "session.end" for e in _session(cluster, device)),
        what="the agent's own record",
    )

    # a login the role does not give is refused at the hub, with the reason
    denied = cluster.tsh("ssh", "nobody@dev1", "true")
    assert denied.returncode == 255
    assert "nobody" in denied.stderr and denied.stderr.count("\n") == 1, denied.stderr

    # back to end to end: the hub records nothing more
    cluster.tctl("nodes", "set", "dev1", "--recording", "off")
    again = cluster.tsh("ssh", f"{ME}@dev1", "echo direct")
    assert again.returncode == 0 and again.stdout == "direct\n"
    assert len(_hub_sessions(cluster, "rita")) == 1
    assert cluster.tsh("ls", "--format", "json").stdout.count('"off"') == 1
    updates = cluster.tctl_json("audit", "search", "--type", "node.updated")
    assert [e["fields"]["recording"] for e in updates] == ["proxy", "off"]


def _tmux(cluster: Cluster, *args: str) -> str:
    assert TMUX is not None
    sock, conf = cluster.root / "tmux.sock", cluster.root / "tmux.conf"
    conf.write_text('set -g default-terminal "screen-256color"\n')
    proc = subprocess.run(
        [TMUX, "-S", str(sock), "-f", str(conf), *args],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=20,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def _screen_has(cluster: Cluster, pattern: str, what: str) -> str:
    regex = re.compile(pattern, re.MULTILINE)

    def found() -> str | None:
        text = _tmux(cluster, "capture-pane", "-p", "-J", "-t", "t")
        return text if regex.search(text) else None

    return str(wait_for(found, timeout=30, interval=0.1, what=what))


@pytest.mark.skipif(TMUX is None, reason="tmux is not installed")
def test_interactive_pty_session_through_the_proxy(cluster: Cluster) -> None:
    """A pty shell in a real terminal (tmux): TERM, size, resize, typed input, exit."""
    cluster.add_user("ivy", [ME])
    cluster.start_agent("dev1")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    assert cluster.login("ivy").returncode == 0
    _proxy(cluster, "dev1")
    tsh = f"{BIN / 'tsh'} ssh {ME}@dev1; echo EXIT=$?; exec sleep 600"
    _tmux(cluster, "new-session", "-d", "-s", "t", "-x", "91", "-y", "17", tsh)
    try:
        _screen_has(cluster, r"[#$>%] *$", "the remote prompt")
        _tmux(cluster, "send-keys", "-t", "t", "-l", "echo T=$TERM; stty size; tty\n")
        _screen_has(cluster, r"^/dev/pts/", "the output")
        _tmux(cluster, "resize-window", "-t", "t", "-x", "100", "-y", "20")

        def resized() -> bool:
            _tmux(cluster, "send-keys", "-t", "t", "-l", "stty size\n")
            return "20 100" in _screen_has(cluster, r"^\d+ \d+\s*$", "stty size")

        wait_for(resized, timeout=15, interval=0.2, what="the window change")
        _tmux(cluster, "send-keys", "-t", "t", "-l", "exit 7\n")
        screen = _screen_has(cluster, r"^EXIT=\d+", "tsh's exit")
    finally:
        with contextlib.suppress(AssertionError):
            _tmux(cluster, "kill-server")
    assert "EXIT=7" in screen and "T=screen-256color" in screen and "17 91" in screen, screen
    start = _hub_sessions(cluster, "ivy")[0]
    assert start["fields"]["pty"] is True
    played = cluster.tsh("play", start["session"], "--format", "text").stdout
    assert "17 91" in played and "20 100" in played and "T=screen-256color" in played
