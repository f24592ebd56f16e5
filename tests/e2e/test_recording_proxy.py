"""The hub's recording proxy through real processes: an embedded-server node and a
legacy OpenSSH sshd behind a forward-mode agent, each set to ``--recording proxy``."""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import re
import shutil
import signal
import socket
import subprocess
from pathlib import Path
from typing import Any

from helpers import BIN, Cluster, free_port, stop_process, wait_for
from require import require_binaries
from sshdkit import legacy_sshd

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
    unknown = cluster.tctl("nodes", "set", "nosuch", "--recording", "proxy", check=False)
    assert unknown.returncode != 0 and unknown.stderr.count("\n") == 1, unknown.stderr
    assert "tctl nodes ls" in unknown.stderr

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

    # OpenSSH through tsh config accepts the hub's host certificate for the node unchanged
    if shutil.which("ssh"):
        config = cluster.root / "ssh_config"
        config.write_text(cluster.tsh("config").stdout)
        name = json.loads(cluster.tsh("status", "--format", "json").stdout)["cluster"]
        ssh = subprocess.run(
            ["ssh", "-F", str(config), "-o", "BatchMode=yes", f"{ME}@dev1.{name}", "echo ok"],
            capture_output=True,
            text=True,
            env=cluster.env(),
            timeout=60,
        )
        assert ssh.returncode == 0 and ssh.stdout == "ok\n", ssh.stderr

    # a login the role does not give is refused at the hub, with the reason
    denied = cluster.tsh("ssh", "nobody@dev1", "true")
    assert denied.returncode == 255
    assert "nobody" in denied.stderr and denied.stderr.count("\n") == 1, denied.stderr

    # the sftp subsystem passes through (tsh scp)
    src = cluster.root / "src.txt"
    src.write_text("payload\n")
    dst = cluster.root / "dst.txt"
    copied = cluster.tsh("scp", "-q", str(src), f"{ME}@dev1:{dst}")
    assert copied.returncode == 0, copied.stderr
    assert dst.read_text() == "payload\n"
    sftp = _hub_sessions(cluster, "rita")[-1]
    assert sftp["fields"]["subsystem"] == "sftp"
    recorded = len(_hub_sessions(cluster, "rita"))

    # back to end to end: the hub records nothing more
    cluster.tctl("nodes", "set", "dev1", "--recording", "off")
    again = cluster.tsh("ssh", f"{ME}@dev1", "echo direct")
    assert again.returncode == 0 and again.stdout == "direct\n"
    assert len(_hub_sessions(cluster, "rita")) == recorded
    updates = cluster.tctl_json("audit", "search", "--type", "node.updated")
    assert [e["fields"]["recording"] for e in updates] == ["proxy", "off"]


def _banner(port: int) -> str | None:
    """The first line a TCP server on ``port`` sends, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), 2) as sock:
            sock.settimeout(5)
            line = sock.recv(64).decode(errors="replace")
    except OSError:
        return None
    return line if line.startswith("SSH-2.0-") else None


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


def test_legacy_sshd_behind_a_forward_agent_in_proxy_mode(cluster: Cluster, tmp_path: Path) -> None:
    """A real sshd (trusting the user CA, host cert from the host CA) reached through a
    forward-mode agent: exec and a pty shell in a real terminal (tmux), recorded at the hub."""
    require_binaries("tmux", "sshd", "ssh-keygen")
    cluster.add_user("lena", [ME])
    with legacy_sshd(cluster, tmp_path, name="legacy-1") as sshd:
        cluster.start_agent("legacy-1", "", None, "--ssh-target", sshd.target)
        wait_for(lambda: cluster.node_online("legacy-1"), what="legacy-1 online")
        assert cluster.login("lena").returncode == 0
        _proxy(cluster, "legacy-1")

        run = cluster.tsh("ssh", f"{ME}@legacy-1", "echo hi; exit 3")
        assert run.returncode == 3 and run.stdout == "hi\n", run.stderr
        # sshd saw the hub's certificate for lena (same key id), signed by the user CA
        assert re.search(r"Accepted publickey for \S+ .*ID lena ", sshd.log_text())
        exec_start = _hub_sessions(cluster, "lena")[0]
        assert exec_start["fields"]["command"] == "echo hi; exit 3"
        played = cluster.tsh("play", exec_start["session"], "--format", "text")
        assert played.stdout == "hi\n"

        # a port forward through the proxy, to the device's own sshd: its banner
        local = free_port()
        forward = subprocess.Popen(
            [
                str(BIN / "tsh"),
                "ssh",
                "-N",
                "-L",
                f"{local}:127.0.0.1:{sshd.port}",
                f"{ME}@legacy-1",
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            env=cluster.env(),
        )
        try:
            wait_for(lambda: _banner(local), what="the banner through tsh -L")
        finally:
            stop_process(forward)
        assert _banner(local) is None  # stopped
        ends = wait_for(
            lambda: cluster.tctl_json(
                "audit", "search", "--type", "port.forward.end", "--node", "hub"
            ),
            what="port.forward.end at the hub",
        )
        assert ends[0]["fields"]["port"] == sshd.port and ends[0]["fields"]["bytes_out"]

        tsh = f"{BIN / 'tsh'} ssh {ME}@legacy-1; echo EXIT=$?; exec sleep 600"
        _tmux(cluster, "new-session", "-d", "-s", "t", "-x", "91", "-y", "17", tsh)
        pids: list[int] = []  # tmux's server and the pane's shell, if kill-server fails
        try:
            shown = _tmux(cluster, "display-message", "-p", "-t", "t", "#{pid} #{pane_pid}")
            pids = [int(pid) for pid in shown.split()]
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
            try:
                _tmux(cluster, "kill-server")
            except (AssertionError, subprocess.TimeoutExpired):
                for pid in reversed(pids):  # the pane's `exec sleep 600` must not linger
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
    assert "EXIT=7" in screen and "T=screen-256color" in screen and "17 91" in screen, screen
    shell = [s for s in _hub_sessions(cluster, "lena") if s["fields"]["pty"]]
    assert len(shell) == 1 and shell[0]["fields"]["command"] == ""
    played = cluster.tsh("play", shell[0]["session"], "--format", "text").stdout
    assert "17 91" in played and "20 100" in played and "T=screen-256color" in played
