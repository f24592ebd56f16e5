"""Provisioning for real: an image directory an agent joins from, and a shell on a pty."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

from helpers import BIN, Cluster, stop_process, wait_for

ROOT = Path(__file__).resolve().parents[2]
UNIT = ROOT / "packaging" / "systemd" / "remoteler-agent.service"
PIN = "sha256:" + "ab" * 32


def provision(*args: str, input: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "firmware_tools.cli", "provision", *args],
        capture_output=True,
        text=True,
        input=input,
        timeout=60,
    )


def start_from_config(cluster: Cluster, conf: Path, data: Path) -> subprocess.Popen[Any]:
    log = cluster.root / "agent-provisioned.log"
    cluster.logs.append(log)
    proc = subprocess.Popen(
        [str(BIN / "edge-agent"), "start", "--config", str(conf), "--data-dir", str(data)],
        stdout=open(log, "ab"),  # noqa: SIM115 - the child keeps it
        stderr=subprocess.STDOUT,
        env=cluster.env(),
    )
    cluster.agents["provisioned"] = proc
    return proc


def healthy(data: Path) -> bool:
    cmd = [str(BIN / "edge-agent"), "health", "--data-dir", str(data)]
    return subprocess.run(cmd, capture_output=True, timeout=30).returncode == 0


def test_an_agent_joins_from_a_provisioned_image_and_restarts_without_the_token(
    cluster: Cluster, tmp_path: Path
) -> None:
    image = tmp_path / "image"
    image.mkdir()
    token = cluster.token()
    out = provision(
        "--root", str(image), "--hub", cluster.addr, "--ca-pin", cluster.ca_pin(),
        "--token-stdin", "--labels", "env=field,kind=pump", "--name", "pump-7",
        "--systemd-unit", str(UNIT),
        input=token + "\n",
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    conf = image / "etc/remoteler/agent.toml"
    assert (conf.stat().st_mode & 0o777) == 0o600
    assert tomllib.loads(conf.read_text())["token"] == token
    link = image / "etc/systemd/system/multi-user.target.wants/remoteler-agent.service"
    assert os.readlink(link) == "/etc/systemd/system/remoteler-agent.service"
    assert (image / "etc/systemd/system/remoteler-agent.service").read_bytes() == UNIT.read_bytes()

    data = tmp_path / "agent-data"
    agent = start_from_config(cluster, conf, data)  # --config and --data-dir, nothing else
    wait_for(lambda: cluster.node_online("pump-7"), what="provisioned agent online")
    cluster.add_user("ops", ["root"])
    assert cluster.login("ops").returncode == 0
    nodes = json.loads(cluster.tsh("ls", "--format", "json").stdout)
    assert [(n["name"], n["labels"]) for n in nodes] == [
        ("pump-7", {"env": "field", "kind": "pump"})
    ]
    wait_for(lambda: healthy(data), what="edge-agent health to pass")

    # The token is single use and now spent: a restart from the same file must not need it.
    stop_process(agent)
    assert not healthy(data)  # a stopped agent is unhealthy at once
    start_from_config(cluster, conf, data)
    log = cluster.root / "agent-provisioned.log"
    wait_for(lambda: log.read_text().count("tunnel up") == 2, what="second tunnel up")
    wait_for(lambda: cluster.node_online("pump-7"), what="agent online again")
    assert "already joined" in log.read_text()
    assert token not in cluster.all_logs()


def test_bad_provisioning_input_is_one_line(tmp_path: Path) -> None:
    out = provision(
        "--root", str(tmp_path), "--hub", "h:1", "--ca-pin", "md5:x", "--token-stdin", input="t\n"
    )
    assert out.returncode == 2 and "--ca-pin" in out.stderr and out.stderr.count("\n") == 1
    out = provision(
        "--root", str(tmp_path / "nope"), "--hub", "h:1", "--ca-pin", PIN, "--token-stdin",
        input="t\n",
    )  # fmt: skip
    assert out.returncode == 2 and "not a directory" in out.stderr
    assert not (tmp_path / "etc").exists()


def test_provision_over_a_serial_console_to_a_real_shell(tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    master, slave = os.openpty()
    shell = subprocess.Popen(
        # Interactive (stdin is a tty: prompts and all) but +m: the pty master is no
        # controlling tty, so job control would stop the shell with SIGTTIN.
        ["/bin/sh", "+m", "-s"],
        stdin=master,
        stdout=master,
        stderr=master,
        cwd=home,
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        start_new_session=True,
    )
    os.close(master)
    try:
        device = tmp_path / "device"
        out = provision(
            "--serial", os.ttyname(slave), "--remote-root", str(device),
            "--hub", "hub.example:3025", "--ca-pin", PIN, "--token", "tok-123",
            "--labels", "site=lab", "--timeout", "20",
        )  # fmt: skip
        assert out.returncode == 0, out.stderr
        assert "sha256 checked" in out.stdout
        conf = device / "etc/remoteler/agent.toml"
        assert (conf.stat().st_mode & 0o777) == 0o600
        doc = tomllib.loads(conf.read_text())
        assert doc == {
            "hub": "hub.example:3025",
            "ca-pin": PIN,
            "token": "tok-123",
            "labels": "site=lab",
        }
        assert shell.poll() is None  # the shell is still there for the technician
    finally:
        os.close(slave)
        stop_process(shell, signal.SIGKILL)  # an interactive shell ignores SIGTERM


def test_a_token_file_provisions_and_a_token_on_the_command_line_warns(tmp_path: Path) -> None:
    token = tmp_path / "join.token"
    token.write_text("tok-123\n")
    token.chmod(0o600)
    root = tmp_path / "root"
    root.mkdir()
    out = provision(
        "--root", str(root), "--hub", "h:1", "--ca-pin", PIN, "--token-file", str(token)
    )
    assert out.returncode == 0 and out.stderr == "", out.stderr
    conf = root / "etc" / "remoteler" / "agent.toml"
    assert tomllib.loads(conf.read_text())["token"] == "tok-123"
    out = provision("--root", str(root), "--hub", "h:1", "--ca-pin", PIN, "--token", "tok-123")
    assert out.returncode == 0
    assert out.stderr.startswith("firmware-tools: warning: --token is visible"), out.stderr
    token.write_text("")
    out = provision(
        "--root", str(root), "--hub", "h:1", "--ca-pin", PIN, "--token-file", str(token)
    )
    assert out.returncode != 0 and out.stderr.count("\n") == 1 and "is empty" in out.stderr


def test_serial_provisioning_fails_clearly_when_no_shell_answers(tmp_path: Path) -> None:
    master, slave = os.openpty()  # nobody reads the other end
    try:
        out = provision(
            "--serial", os.ttyname(slave), "--remote-root", str(tmp_path),
            "--hub", "h:1", "--ca-pin", PIN, "--token-stdin", "--timeout", "1", input="t\n",
        )  # fmt: skip
    finally:
        os.close(slave)
        os.close(master)
    assert out.returncode == 1
    assert out.stderr.count("\n") == 1 and "no shell answered" in out.stderr
    assert not (tmp_path / "etc").exists()


def test_owner_chowns_the_agents_paths_only_and_dirs_are_0755_under_umask_077(
    tmp_path: Path,
) -> None:
    # As for the container image: the agent runs as uid 10001, systemd (root) reads the unit.
    assert os.geteuid() == 0, "this test chowns to another uid: run the suite as root"
    root = tmp_path / "image"
    root.mkdir()
    out = subprocess.run(
        ["/bin/sh", "-c", 'umask 077 && exec "$@"', "sh", sys.executable, "-m",
         "firmware_tools.cli", "provision", "--root", str(root), "--hub", "h:1",
         "--ca-pin", PIN, "--token-stdin", "--systemd-unit", str(UNIT), "--owner", "10001:10002",
         "--data-dir", "/data/agent"],
        input="tok\n", capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    mine = (os.geteuid(), os.getegid())
    expect = {  # path: (uid, gid, mode)
        "etc": (*mine, 0o755),
        "etc/remoteler": (10001, 10002, 0o755),
        "etc/remoteler/agent.toml": (10001, 10002, 0o600),
        "etc/systemd": (*mine, 0o755),
        "etc/systemd/system": (*mine, 0o755),
        "etc/systemd/system/remoteler-agent.service": (*mine, 0o644),
        "etc/systemd/system/multi-user.target.wants": (*mine, 0o755),
        "data": (*mine, 0o755),
        "data/agent": (10001, 10002, 0o700),
    }
    for rel, (uid, gid, mode) in expect.items():
        st = os.lstat(root / rel)
        assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (uid, gid, mode), rel
    link = os.lstat(root / "etc/systemd/system/multi-user.target.wants/remoteler-agent.service")
    assert (link.st_uid, link.st_gid) == mine
