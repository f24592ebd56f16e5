"""The walking skeleton with real processes on loopback: hub, agents, tctl, tsh."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import time
from pathlib import Path

from helpers import BIN, Cluster, stop_process, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name


def _ready(cluster: Cluster, name: str = "dev1", labels: str = "env=lab") -> None:
    cluster.start_agent(name, labels)
    wait_for(lambda: cluster.node_online(name), what=f"{name} online")


def test_login_ls_and_ssh_exit_code(cluster: Cluster) -> None:
    cluster.add_user("alice", [ME, "pi"])
    _ready(cluster)
    login = cluster.login("alice")
    assert login.returncode == 0, login.stderr
    assert "Logged in as alice" in login.stdout

    ls = cluster.tsh("ls", "--format", "json")
    assert ls.returncode == 0, ls.stderr
    nodes = json.loads(ls.stdout)
    assert [(n["name"], n["online"], n["labels"]) for n in nodes] == [
        ("dev1", True, {"env": "lab"})
    ]
    assert "dev1" in cluster.tsh("ls", "env=lab").stdout
    assert "dev1" not in cluster.tsh("ls", "env=prod").stdout

    run = cluster.tsh("ssh", f"{ME}@dev1", "echo hi; exit 3")
    assert run.stdout == "hi\n", run.stderr
    assert run.returncode == 3

    status = json.loads(cluster.tsh("status", "--format", "json").stdout)
    assert status["user"] == "alice" and set(status["logins"]) == {ME, "pi"}


def test_identity_file_from_tctl_auth_sign(cluster: Cluster, tmp_path: Path) -> None:
    cluster.add_user("jenkins", [ME])
    _ready(cluster)
    ident = tmp_path / "jenkins"
    cluster.tctl("auth", "sign", "--user", "jenkins", "--ttl", "1h", "-o", str(ident))
    assert (ident.stat().st_mode & 0o777) == 0o600
    listing = subprocess.run(
        ["ssh-keygen", "-L", "-f", f"{ident}-cert.pub"], capture_output=True, text=True, check=True
    ).stdout
    assert 'Key ID: "jenkins"' in listing and ME in listing
    run = cluster.tsh(
        "-i", str(ident), "--proxy", cluster.addr, "ssh", f"{ME}@dev1", "echo hi; exit 3"
    )
    assert (run.stdout, run.returncode) == ("hi\n", 3), run.stderr
    # also with the flags after the subcommand
    run = cluster.tsh("ssh", "-i", str(ident), "--proxy", cluster.addr, f"{ME}@dev1", "true")
    assert run.returncode == 0, run.stderr


def test_pty_when_asked(cluster: Cluster) -> None:
    cluster.add_user("carol", [ME])
    _ready(cluster)
    assert cluster.login("carol").returncode == 0
    run = cluster.tsh(
        "ssh", "-t", f"{ME}@dev1", "tty; echo cols=$(tput cols 2>/dev/null || stty size)"
    )
    assert run.returncode == 0, run.stderr
    assert "/dev/pts/" in run.stdout
    run = cluster.tsh("ssh", "-T", f"{ME}@dev1", "tty")
    assert "not a tty" in run.stdout


def _listening_inodes() -> set[str]:
    inodes = set()
    for table in ("tcp", "tcp6", "udp", "udp6"):
        path = Path("/proc/net") / table
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            parts = line.split()
            # TCP LISTEN is state 0A; any bound UDP socket counts as listening (state 07)
            if (table.startswith("tcp") and parts[3] == "0A") or (
                table.startswith("udp") and parts[3] == "07"
            ):
                inodes.add(parts[9])
    return inodes


def _socket_inodes(pid: int) -> set[str]:
    out = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            out.add(target[8:-1])
    return out


def test_agent_has_no_listening_socket(cluster: Cluster) -> None:
    cluster.add_user("dave", [ME])
    _ready(cluster)
    assert cluster.login("dave").returncode == 0
    assert cluster.tsh("ssh", f"{ME}@dev1", "true").returncode == 0
    listening = _listening_inodes()
    assert cluster.hub is not None
    assert _socket_inodes(cluster.hub.pid) & listening, "detector sanity: the hub listens"
    agent = cluster.agents["dev1"]
    assert _socket_inodes(agent.pid), "the agent holds its tunnel socket"
    assert not _socket_inodes(agent.pid) & listening


def test_access_refused_for_login_not_in_role(cluster: Cluster) -> None:
    cluster.add_user("erin", [ME])
    _ready(cluster)
    assert cluster.login("erin").returncode == 0
    run = cluster.tsh("ssh", "nobody@dev1", "true")
    assert run.returncode == 255
    assert "login 'nobody' is not allowed" in run.stderr
    assert len(run.stderr.strip().splitlines()) == 1


def test_access_refused_for_labels_role_does_not_match(cluster: Cluster, tmp_path: Path) -> None:
    role = tmp_path / "prod.toml"
    role.write_text(
        'kind = "role"\nname = "prod-only"\nlogins = ["{{internal.logins}}"]\n'
        '[node_labels]\nenv = ["prod*"]\n'
    )
    cluster.tctl("create", "-f", str(role))
    cluster.add_user("frank", [ME], roles="prod-only")
    _ready(cluster, "lab1", "env=lab")
    _ready(cluster, "prod1", "env=production")
    assert cluster.login("frank").returncode == 0
    names = [n["name"] for n in json.loads(cluster.tsh("ls", "--format", "json").stdout)]
    assert names == ["prod1"]
    run = cluster.tsh("ssh", f"{ME}@lab1", "true")
    assert run.returncode == 255
    assert "node 'lab1' not found or access denied" in run.stderr  # as a missing node
    assert "env=lab" not in run.stderr
    assert cluster.tsh("ssh", f"{ME}@prod1", "echo ok").stdout == "ok\n"


def test_join_token_is_single_use_and_expires(cluster: Cluster) -> None:
    token = cluster.token()
    cluster.start_agent("first", "", token)
    wait_for(lambda: cluster.node_online("first"), what="first online")
    second = cluster.start_agent("second", "", token)
    assert second.wait(timeout=30) != 0
    short = cluster.token("--ttl", "1s")
    time.sleep(1.5)
    third = cluster.start_agent("third", "", short)
    assert third.wait(timeout=30) != 0
    logs = cluster.all_logs()
    assert "join token was already used" in logs
    assert "join token expired" in logs
    assert token not in logs and short not in logs, "tokens never reach a log"


def test_wrong_ca_pin_stops_join_before_token_is_sent(cluster: Cluster) -> None:
    token = cluster.token()
    bad_pin = "sha256:" + "0" * 64
    proc = subprocess.run(
        [
            str(BIN / "edge-agent"),
            "start",
            "--hub",
            cluster.addr,
            "--ca-pin",
            bad_pin,
            "--name",
            "pinned",
            "--data-dir",
            str(cluster.root / "agent-pinned"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        env=cluster.env(REMOTELER_JOIN_TOKEN=token),  # as 'tctl tokens add' says (no warning)
    )
    assert proc.returncode != 0
    assert "CA pin mismatch" in proc.stderr
    assert len([x for x in proc.stderr.splitlines() if x.startswith("edge-agent:")]) == 1
    states = {t["state"] for t in cluster.tctl_json("tokens", "ls")}
    assert states == {"valid"}, "the token was never presented"
    hub_log = (cluster.root / "hub.log").read_text()
    assert "join refused" not in hub_log and "node joined" not in hub_log
    # the same token still works with the right pin
    cluster.start_agent("pinned", "", token)
    wait_for(lambda: cluster.node_online("pinned"), what="pinned online")


def test_agent_reconnects_after_hub_sigkill(cluster: Cluster) -> None:
    cluster.add_user("grace", [ME])
    _ready(cluster)
    assert cluster.login("grace").returncode == 0
    assert cluster.tsh("ssh", f"{ME}@dev1", "echo before").stdout == "before\n"
    agent_pid = cluster.agents["dev1"].pid
    cluster.kill_hub(signal.SIGKILL)
    cluster.start_hub()
    wait_for(lambda: cluster.node_online("dev1"), timeout=30, what="agent back after restart")
    assert cluster.agents["dev1"].pid == agent_pid and cluster.agents["dev1"].poll() is None
    run = cluster.tsh("ssh", f"{ME}@dev1", "echo after")
    assert (run.stdout, run.returncode) == ("after\n", 0), run.stderr


def test_errors_are_one_line_and_say_what_to_do(cluster: Cluster, tmp_path: Path) -> None:
    cluster.add_user("heidi", [ME])
    _ready(cluster)
    # hub unreachable
    closed = cluster.tsh("login", "--proxy", "127.0.0.1:1", "--user", "heidi", input="x\n")
    assert closed.returncode != 0
    assert closed.stderr.count("\n") == 1 and "cannot reach the hub" in closed.stderr
    # CA pin mismatch on login
    bad = cluster.tsh(
        "login",
        "--proxy",
        cluster.addr,
        "--user",
        "heidi",
        "--ca-pin",
        "sha256:" + "1" * 64,
        input="x\n",
    )
    assert "CA pin mismatch" in bad.stderr and bad.stderr.count("\n") == 1
    # wrong password
    wrong = cluster.tsh(
        "login",
        "--proxy",
        cluster.addr,
        "--user",
        "heidi",
        "--ca-pin",
        cluster.ca_pin(),
        "--otp",
        "000000",
        input="nope\n",
    )
    assert "login failed" in wrong.stderr and wrong.stderr.count("\n") == 1
    # not logged in
    assert "run 'tsh login" in cluster.tsh("ls").stderr
    assert cluster.login("heidi").returncode == 0
    # unknown node
    unknown = cluster.tsh("ssh", f"{ME}@nope", "true")
    assert unknown.returncode == 255 and "node 'nope' not found" in unknown.stderr
    # node offline
    stop_process(cluster.agents.pop("dev1"))
    wait_for(lambda: not cluster.node_online("dev1"), what="dev1 offline")
    offline = cluster.tsh("ssh", f"{ME}@dev1", "true")
    assert offline.returncode == 255 and "is offline" in offline.stderr
    assert offline.stderr.count("\n") == 1
    # expired certificate in an identity file
    ident = tmp_path / "short"
    cluster.tctl("auth", "sign", "--user", "heidi", "--ttl", "1s", "-o", str(ident))
    time.sleep(1.2)
    expired = cluster.tsh("-i", str(ident), "--proxy", cluster.addr, "ls")
    assert "has expired: write a new one with 'tctl auth sign'" in expired.stderr
    assert expired.stderr.count("\n") == 1


def test_invite_flow(cluster: Cluster) -> None:
    out = cluster.tctl_json("users", "add", "ivan", "--logins", ME)
    invite = out["invite"]
    info = cluster.tsh(
        "login",
        "--proxy",
        cluster.addr,
        "--user",
        "ivan",
        "--ca-pin",
        cluster.ca_pin(),
        "--invite",
        invite,
        "--otp",
        "000000",
        input="a-new-password\n",
    )
    assert "one-time code not accepted" in info.stderr
    # The secret is shown to the user; read it back from the hub the way tsh does.
    import re

    secret = re.search(r"secret: ([A-Z2-7]+)", info.stderr)
    assert secret, info.stderr
    import pyotp

    ok = cluster.tsh(
        "login",
        "--proxy",
        cluster.addr,
        "--user",
        "ivan",
        "--invite",
        invite,
        "--otp",
        pyotp.TOTP(secret.group(1)).now(),
        input="a-new-password\n",
    )
    assert ok.returncode == 0, ok.stderr
    again = cluster.tsh(
        "login",
        "--proxy",
        cluster.addr,
        "--user",
        "ivan",
        "--invite",
        invite,
        "--otp",
        "123456",
        input="x\n",
    )
    assert "invite not valid" in again.stderr
    _ready(cluster)
    assert cluster.tsh("ssh", f"{ME}@dev1", "echo ok").stdout == "ok\n"


def test_ssh_agent_gets_keys_on_login_and_loses_them_on_logout(
    cluster: Cluster, tmp_path: Path
) -> None:
    cluster.add_user("judy", [ME])
    sock = tmp_path / "agent.sock"
    agent = subprocess.Popen(["ssh-agent", "-D", "-a", str(sock)], stdout=subprocess.DEVNULL)
    try:
        wait_for(sock.exists, what="ssh-agent socket")
        env = cluster.env(SSH_AUTH_SOCK=str(sock))
        from helpers import PASSWORD, current_totp

        login = cluster.tsh(
            "login",
            "--proxy",
            cluster.addr,
            "--user",
            "judy",
            "--ca-pin",
            cluster.ca_pin(),
            "--otp",
            current_totp(),
            input=PASSWORD + "\n",
            env=env,
        )
        assert login.returncode == 0, login.stderr
        listed = subprocess.run(["ssh-add", "-L"], env=env, capture_output=True, text=True).stdout
        assert "ssh-ed25519-cert-v01@openssh.com" in listed
        logout = cluster.tsh("logout", env=env)
        assert "ssh-agent" in logout.stdout
        after = subprocess.run(["ssh-add", "-L"], env=env, capture_output=True, text=True)
        assert "cert-v01" not in after.stdout
        assert not (cluster.tsh_home / "profile").exists()
        assert not list((cluster.tsh_home / "keys").rglob("judy*"))
    finally:
        stop_process(agent)


def test_bulk_data_both_ways_arrives_intact(cluster: Cluster) -> None:
    """Megabytes each way: exercises window credit and message-size limits on every leg."""
    cluster.add_user("kate", [ME])
    _ready(cluster)
    assert cluster.login("kate").returncode == 0
    payload = os.urandom(12 << 20)
    proc = subprocess.run(
        [str(BIN / "tsh"), "ssh", f"{ME}@dev1", "cat"],
        input=payload,
        capture_output=True,
        env=cluster.env(),
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert len(proc.stdout) == len(payload)
    assert proc.stdout == payload
