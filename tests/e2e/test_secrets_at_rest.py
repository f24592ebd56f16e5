"""Secrets at rest and in logs: key files readable by others are refused at start-up,
CA keys encrypted with a passphrase work end to end, and no secret used in a full run
reaches a log line or a command's output."""

from __future__ import annotations

import os
import pwd
import signal
import subprocess
from pathlib import Path

import pytest
from helpers import BIN, PASSWORD, TOTP_SECRET, Cluster, current_totp, wait_for

ME = pwd.getpwuid(os.geteuid()).pw_name
PASSPHRASE = "a long CA passphrase for tests"


def _hub_start(cluster: Cluster, *extra: str, env: dict[str, str] | None = None) -> str:
    """Run ``hub start`` expecting it to refuse; return its one-line error."""
    proc = subprocess.run(
        [str(BIN / "hub"), "start", "--data-dir", str(cluster.data), "--listen", cluster.addr,
         *extra],
        capture_output=True, text=True, env=env or cluster.env(), timeout=60,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stderr
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    return lines[0]


def test_key_files_readable_by_others_are_refused_at_start_up(cluster: Cluster) -> None:
    cluster.start_agent("dev1")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    cluster.stop()

    key = cluster.data / "ca" / "user_ca.key"
    key.chmod(0o640)
    error = _hub_start(cluster)
    assert str(key) in error and f"chmod 600 {key}" in error, error
    key.chmod(0o600)

    node_key = cluster.root / "agent-dev1" / "identity" / "node.key"
    node_key.chmod(0o644)
    agent = cluster.start_agent("dev1")
    assert agent.wait(timeout=60) != 0
    lines = (cluster.root / "agent-dev1.log").read_text().strip().splitlines()
    assert str(node_key) in lines[-1] and f"chmod 600 {node_key}" in lines[-1], lines[-1]


def _passfile(tmp_path: Path, text: str = PASSPHRASE, mode: int = 0o600) -> Path:
    path = tmp_path / "ca-passphrase"
    path.write_text(text + "\n")
    path.chmod(mode)
    return path


def test_encrypted_ca_keys_round_trip(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.stop()
    passfile = _passfile(tmp_path)
    cluster.start_hub("--ca-passphrase-file", str(passfile))  # plain keys are encrypted
    for kind in ("user", "host"):
        head = (cluster.data / "ca" / f"{kind}_ca.key").read_text()
        assert head.startswith("-----BEGIN ENCRYPTED PRIVATE KEY-----")
    assert "CA key encrypted" in (cluster.root / "hub.log").read_text()
    # standard PKCS#8 (scrypt): OpenSSL reads it with the passphrase
    pkey = subprocess.run(
        ["openssl", "pkey", "-in", str(cluster.data / "ca" / "user_ca.key"),
         "-passin", f"file:{passfile}", "-pubout"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert pkey.returncode == 0 and "BEGIN PUBLIC KEY" in pkey.stdout, pkey.stderr

    cluster.add_user("carol", [ME])
    cluster.start_agent("dev1")
    wait_for(lambda: cluster.node_online("dev1"), what="dev1 online")
    assert cluster.login("carol").returncode == 0
    ran = cluster.tsh("ssh", f"{ME}@dev1", "echo ok")
    assert (ran.returncode, ran.stdout) == (0, "ok\n"), ran.stderr
    signed = cluster.tctl("auth", "sign", "--user", "carol", "-o", str(tmp_path / "carol"))
    assert signed.returncode == 0

    cluster.kill_hub(signal.SIGTERM)
    error = _hub_start(cluster)
    assert "is encrypted: give its passphrase with --ca-passphrase-file" in error, error
    (tmp_path / "other").mkdir()
    wrong = _passfile(tmp_path / "other", "not the passphrase")
    error = _hub_start(cluster, "--ca-passphrase-file", str(wrong))
    assert "wrong CA passphrase" in error, error
    wrong.chmod(0o644)
    error = _hub_start(cluster, "--ca-passphrase-file", str(wrong))
    assert f"chmod 600 {wrong}" in error, error
    # tctl is a client of the hub: it never reads the CA passphrase or the keys
    cluster.start_hub("--ca-passphrase-file", str(passfile))
    assert cluster.tctl("status").returncode == 0
    assert PASSPHRASE not in cluster.all_logs()


def _key_lines(path: Path) -> list[str]:
    """The base64 lines of a PEM or OpenSSH private key file (what a leak would show)."""
    return [
        line.strip()
        for line in path.read_text().splitlines()
        if line.strip() and not line.startswith("-----") and len(line.strip()) >= 20
    ]


def test_no_secret_of_a_full_run_reaches_a_log_or_an_output(
    cluster: Cluster, tmp_path: Path
) -> None:
    outputs: list[str] = []

    def keep(proc: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
        outputs.extend([proc.stdout, proc.stderr])
        return proc

    join_token = cluster.token()  # printed once by design: not kept as an output
    cluster.add_user("lee", [ME])
    invite = cluster.tctl_json(
        "users", "add", "newbie", "--logins", ME, "--totp-secret", TOTP_SECRET
    )["invite"]
    cluster.start_agent("n1", "", join_token)
    wait_for(lambda: cluster.node_online("n1"), what="online")

    keep(cluster.login("lee"))
    keep(cluster.tsh("ssh", f"{ME}@n1", "echo hello"))
    keep(cluster.tsh("ls"))
    keep(cluster.tsh("status"))
    for wrong in ("wrong password 1", PASSWORD):  # a bad code, a bad password
        keep(cluster.tsh(
            "login", "--proxy", cluster.addr, "--user", "lee", "--otp", "000000",
            input=wrong + "\n",
        ))  # fmt: skip
    keep(
        cluster.tsh(
            "login",
            "--proxy",
            cluster.addr,
            "--user",
            "newbie",
            "--invite",
            "0" * 32,
            "--otp",
            current_totp(),
            input=PASSWORD + "\n",
        )
    )  # fmt: skip  (a wrong invite)
    # the right invite: tsh shows the new TOTP seed to its user, by design: not kept
    accepted = cluster.tsh(
        "login", "--proxy", cluster.addr, "--user", "newbie", "--invite", invite,
        "--otp", current_totp(offset_steps=1), input=PASSWORD + "\n",
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    keep(cluster.tctl("users", "ls"))
    keep(cluster.tctl("tokens", "ls"))
    keep(cluster.tctl("nodes", "ls"))
    keep(cluster.tctl("auth", "sign", "--user", "lee", "-o", str(tmp_path / "lee")))
    keep(cluster.tctl("lock", "--user", "lee", "--message", "audit test"))
    keep(cluster.tctl("audit", "export"))
    keep(cluster.tctl("status"))
    cluster.stop()

    secrets = {
        "join token": join_token,
        "invite": invite,
        "password": PASSWORD,
        "wrong password": "wrong password 1",
        "TOTP seed": TOTP_SECRET,
    }
    keys = [
        cluster.data / "ca" / "user_ca.key",
        cluster.data / "ca" / "host_ca.key",
        cluster.data / "tls" / "hub.key",
        cluster.root / "agent-n1" / "identity" / "node.key",
        tmp_path / "lee",
        *cluster.tsh_home.rglob("*.key"),
        *[p for p in cluster.tsh_home.rglob("*") if p.is_file() and "PRIVATE KEY" in _text(p)],
    ]
    for path in keys:
        for i, line in enumerate(_key_lines(path)):
            secrets[f"{path.name} line {i}"] = line
    assert len(keys) >= 6 and any("node.key" in k for k in secrets)
    text = cluster.all_logs() + "\n".join(outputs)
    assert "user login" in text and "login failed" in text, "the events themselves are there"
    leaked = sorted(name for name, value in secrets.items() if value in text)
    assert not leaked, f"secrets in logs or outputs: {leaked}"
    assert "PRIVATE KEY-----" not in text


def _text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""
