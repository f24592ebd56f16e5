"""TOTP seeds encrypted at rest with the CA passphrase (issue #14 B4): a real hub,
tctl and tsh; the hub's SQLite files are read directly."""

from __future__ import annotations

import base64
import os
import pwd
import sqlite3
import time
from pathlib import Path

import pyotp
import pytest
from helpers import PASSWORD, TOTP_SECRET, Cluster

ME = pwd.getpwuid(os.geteuid()).pw_name
PASSPHRASE = "a long CA passphrase for tests"
NEW_SEED = "KRUGS4ZANFZSAYJAONSWCZBAMZXXEIDU"  # the invited user's


def _files(cluster: Cluster) -> bytes:
    """Every byte of the hub's database: the file, its WAL and shared memory."""
    db = cluster.data / "hub.db"
    return b"".join(
        p.read_bytes() for p in (db, db.with_name("hub.db-wal"), db.with_name("hub.db-shm"))
        if p.exists()
    )  # fmt: skip


def _assert_not_on_disk(cluster: Cluster, seed: str) -> None:
    data = _files(cluster)
    assert seed.encode() not in data, "the base32 seed is in the database files"
    assert base64.b32decode(seed) not in data, "the raw seed is in the database files"


def _stored_seeds(cluster: Cluster) -> dict[str, str]:
    with sqlite3.connect(cluster.data / "hub.db") as db:
        return dict(db.execute("SELECT name, totp_secret FROM users"))


def test_totp_seeds_are_encrypted_with_the_ca_passphrase(
    cluster: Cluster, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cluster.add_user("carol", [ME])  # no passphrase yet: stored in plain text
    assert _stored_seeds(cluster)["carol"] == TOTP_SECRET
    cluster.stop()

    passfile = tmp_path / "ca-passphrase"
    passfile.write_text(PASSPHRASE + "\n")
    passfile.chmod(0o600)
    monkeypatch.setenv("REMOTELER_CA_PASSPHRASE_FILE", str(passfile))  # for tctl
    cluster.start_hub("--ca-passphrase-file", str(passfile))  # migrates carol's seed
    assert "TOTP seeds encrypted" in (cluster.root / "hub.log").read_text()
    assert _stored_seeds(cluster)["carol"].startswith("enc1:")
    _assert_not_on_disk(cluster, TOTP_SECRET)
    assert cluster.login("carol").returncode == 0  # the hub decrypts it to check codes

    invite = cluster.tctl_json("users", "add", "newbie", "--logins", ME, "--totp-secret", NEW_SEED)[
        "invite"
    ]
    accepted = cluster.tsh(
        "login", "--proxy", cluster.addr, "--user", "newbie", "--invite", invite,
        "--ca-pin", cluster.ca_pin(), "--otp", pyotp.TOTP(NEW_SEED).now(),
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert accepted.returncode == 0, accepted.stderr
    assert _stored_seeds(cluster)["newbie"].startswith("enc1:")
    _assert_not_on_disk(cluster, NEW_SEED)
    code = pyotp.TOTP(NEW_SEED).at(time.time() + 30)  # the invite used this step's code
    again = cluster.tsh(
        "login", "--proxy", cluster.addr, "--user", "newbie", "--otp", code,
        input=PASSWORD + "\n",
    )  # fmt: skip
    assert again.returncode == 0, again.stderr
    assert "newbie" in cluster.tctl("users", "ls").stdout
