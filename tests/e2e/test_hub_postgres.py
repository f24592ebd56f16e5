"""Hubs on one PostgreSQL database (``hub start --storage postgresql://...``): real hub
processes, a real server (tests/pgkit.py)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from helpers import BIN, stop_process, wait_for
from pgkit import PASSWORD, PgServer

LISTEN = ("--listen", "127.0.0.1:0")


@pytest.fixture
def passphrase(tmp_path: Path) -> Path:
    path = tmp_path / "ca.passphrase"
    path.write_text("correct horse battery staple\n")
    path.chmod(0o600)
    return path


def _start(root: Path, *flags: str) -> tuple[subprocess.Popen[bytes], Path]:
    root.mkdir()
    log = root / "hub.log"
    with log.open("wb") as out:
        hub = subprocess.Popen(
            [str(BIN / "hub"), "start", "--data-dir", str(root / "data"), *LISTEN, *flags],
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    return hub, log


def _listening_pin(hub: subprocess.Popen[bytes], log: Path) -> str:
    pattern = re.compile(r"hub listening .*ca_pin=(sha256:[0-9a-f]+)")
    found = wait_for(
        lambda: hub.poll() is None and pattern.search(log.read_text()), what="hub listening"
    )
    return str(found.group(1))


def test_two_hubs_on_empty_data_dirs_serve_the_same_cluster(
    pg_server: PgServer, tmp_path: Path, passphrase: Path
) -> None:
    url = pg_server.new_database(password=True)
    password = tmp_path / "pg.password"
    password.write_text(PASSWORD + "\n")
    flags = (
        "--storage",
        url,
        "--storage-password-file",
        str(password),
        "--ca-passphrase-file",
        str(passphrase),
    )
    hubs = [_start(tmp_path / name, *flags) for name in ("one", "two")]  # at once
    try:
        pins = [_listening_pin(hub, log) for hub, log in hubs]
        assert pins[0] == pins[1]
        stored = pg_server.psql(
            "SELECT kind || ' ' || slot || ' ' || split_part(encode(private_key, 'escape'),"
            " E'\\n', 1) FROM authorities ORDER BY kind",
            url.rsplit("/", 1)[1],
        ).splitlines()
        assert stored == [
            "host current -----BEGIN ENCRYPTED PRIVATE KEY-----",
            "user current -----BEGIN ENCRYPTED PRIVATE KEY-----",
        ]
    finally:
        for hub, _log in hubs:
            stop_process(hub)
    passphrase.write_text("another passphrase\n")
    refused = _hub(tmp_path / "three", *flags)
    assert refused.returncode != 0
    assert refused.stderr.strip().startswith("hub: wrong CA passphrase for the")
    assert "Traceback" not in refused.stderr and len(refused.stderr.strip().splitlines()) == 1


def _hub(data: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "hub"), "start", "--data-dir", str(data), "--listen", "127.0.0.1:0", *args],
        capture_output=True,
        text=True,
        timeout=60,
    )
