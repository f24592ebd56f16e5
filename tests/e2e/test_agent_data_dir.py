"""The agent's data dir, end to end: one agent per directory, identity files checked at load.

One hub and one joined agent for the module. A second ``edge-agent start`` on the
same data dir exits at once naming the first one's PID (edge_agent/datadir_lock.py);
a copy of the agent's data dir with one identity file damaged makes a real
``edge-agent start`` print one line naming that file and exit 1
(edge_agent/identity_check.py), where it used to retry for ever with a traceback
on every dial.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from helpers import BIN, Cluster, free_port, wait_for

from remoteler.ca import (
    CertAuthority,
    generate_private_key,
    private_key_from_openssh,
    private_key_to_openssh,
    write_secret_file,
)
from remoteler.ca.x509 import issue_cert

NODE = "dd-node"
KILLED = "dd-killed"
ME = pwd.getpwuid(os.geteuid()).pw_name


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cluster]:
    c = Cluster(tmp_path_factory.mktemp("datadir"), free_port())
    c.start_hub()
    try:
        c.start_agent(NODE, "", None, "--heartbeat-interval", "2")
        log = c.root / f"agent-{NODE}.log"
        wait_for(lambda: "tunnel up" in log.read_text(), timeout=30, what="agent's tunnel up")
        yield c
    finally:
        c.stop()


def _start(cluster: Cluster, data_dir: Path) -> subprocess.CompletedProcess[str]:
    """``edge-agent start`` on ``data_dir`` (already joined); it must exit by itself."""
    return subprocess.run(
        [str(BIN / "edge-agent"), "start", "--data-dir", str(data_dir), "--name", NODE],
        capture_output=True,
        text=True,
        env=cluster.env(),
        timeout=20,  # an agent that retries for ever fails the test here
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "Traceback" not in proc.stderr, proc.stderr[-2000:]
    lines = [ln for ln in proc.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, proc.stderr[-2000:]
    return lines[0]


def test_a_second_agent_on_the_same_data_dir_exits_naming_the_first(cluster: Cluster) -> None:
    first = cluster.agents[NODE]
    proc = _start(cluster, cluster.root / f"agent-{NODE}")
    line = _one_line(proc)
    assert line.startswith("edge-agent: another edge-agent (PID ")
    assert f"PID {first.pid})" in line and str(cluster.root / f"agent-{NODE}") in line
    assert first.poll() is None
    # the first agent's tunnel stays up (the hub writes presence within a few seconds)
    wait_for(lambda: cluster.node_online(NODE), timeout=30, interval=0.5, what="node online")


def _expired(cluster: Cluster, ident: Path) -> None:
    ca = CertAuthority.load(cluster.data / "ca", "host")
    key = private_key_from_openssh((ident / "node.key").read_bytes())
    end = datetime.now(UTC) - timedelta(days=2)  # beyond --max-clock-skew (a day)
    pem = issue_cert(
        ca.private_key,
        ca.x509_pem,
        key.public_key(),
        common_name="expired",
        organization="remoteler-node",
        usage="client",
        not_before=end - timedelta(days=30),
        not_after=end,
    )
    write_secret_file(ident / "node.crt", pem)


def _other_key(cluster: Cluster, ident: Path) -> None:
    write_secret_file(ident / "node.key", private_key_to_openssh(generate_private_key()))


DAMAGE: dict[str, tuple[Callable[[Cluster, Path], None], str]] = {
    "garbage node.crt": (
        lambda c, d: write_secret_file(d / "node.crt", b"-----BEGIN CERTIFICATE-----\nxx\n"),
        "node.crt holds no readable x509 certificate",
    ),
    "garbage host_ca.crt": (
        lambda c, d: write_secret_file(d / "host_ca.crt", b"\x00" * 300),
        "host_ca.crt holds no readable CA certificate",
    ),
    "a key that is not the certificate's": (
        _other_key,
        "node.crt is not the certificate of",
    ),
    "an expired node.crt": (_expired, "node.crt expired at"),
    "garbage node-cert.pub": (
        lambda c, d: write_secret_file(d / "node-cert.pub", b"ssh-ed25519-cert-v01@openssh.com"),
        "node-cert.pub holds no readable SSH host certificate",
    ),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_a_bad_identity_file_is_one_line_and_exit_1(
    cluster: Cluster, tmp_path: Path, case: str
) -> None:
    damage, expected = DAMAGE[case]
    data_dir = tmp_path / "agent"
    shutil.copytree(cluster.root / f"agent-{NODE}", data_dir)
    (data_dir / "agent.lock").unlink(missing_ok=True)
    ident = data_dir / "identity"
    damage(cluster, ident)
    line = _one_line(_start(cluster, data_dir))
    assert expected in line, line
    assert str(ident) in line and "new join token" in line, line


def _session_pids(command: str) -> list[int]:
    """The session's shell (``SHELL -c command``) and its ``sleep``, once both run
    (not the tsh client, whose command line holds ``command`` too)."""
    shell, child = f"-c\0{command}\0".encode(), command.split(";")[0].replace(" ", "\0")
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue  # ended meanwhile
            if cmdline.endswith(shell) or cmdline == f"{child}\0".encode():
                found.append(int(entry.name))
    return found if len(found) == 2 else []


def _holds(pid: int, path: Path) -> bool:
    """Whether process ``pid`` has ``path`` open."""
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if os.readlink(fd) == str(path):
                return True
        except OSError:
            continue
    return False


def test_an_agent_killed_while_a_session_shell_runs_can_be_restarted(cluster: Cluster) -> None:
    """The lock file's descriptor is close-on-exec: a session's shell (its own process
    session, which outlives a ``kill -9`` of the agent) must not hold the flock, or the
    agent could not start again until the shell ended."""
    data_dir = cluster.root / f"agent-{KILLED}"
    lock = data_dir / "agent.lock"
    cluster.add_user("kim", [ME])
    agent = cluster.start_agent(KILLED, "")
    wait_for(lambda: cluster.node_online(KILLED), timeout=30, interval=0.5, what="node online")
    assert cluster.login("kim").returncode == 0
    command = "sleep 47.25; true"  # unique: finds the shell and its child in /proc
    tsh = subprocess.Popen(
        [str(BIN / "tsh"), "ssh", f"{ME}@{KILLED}", command],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=cluster.env(),
    )
    shell: list[int] = []
    try:
        shell = wait_for(lambda: _session_pids(command), timeout=30, what="the session's shell")
        assert _holds(agent.pid, lock)  # the probe works: the agent has it open
        assert not [pid for pid in shell if _holds(pid, lock)], "a child holds agent.lock"
        agent.send_signal(signal.SIGKILL)
        agent.wait(timeout=10)
        assert all(os.path.exists(f"/proc/{pid}") for pid in shell), "the shell outlives it"
        log = cluster.root / f"agent-{KILLED}.log"
        ups = log.read_text().count("tunnel up")
        again = cluster.start_agent(KILLED, "")
        wait_for(
            lambda: again.poll() is not None or log.read_text().count("tunnel up") > ups,
            timeout=30,
            what="the restarted agent's tunnel up",
        )
        assert again.poll() is None, log.read_text()[-2000:]
        assert lock.read_text() == f"{again.pid}\n"
    finally:
        for pid in shell:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        tsh.kill()
        tsh.wait(timeout=10)
