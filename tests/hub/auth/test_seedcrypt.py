"""TOTP seeds encrypted with the CA passphrase (hub/auth/seedcrypt.py), against a real SQLite
file; the end-to-end path (hub start, tctl, tsh) is in tests/e2e/test_totp_at_rest.py."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
from dataclasses import replace
from pathlib import Path

import pytest
from hubkit import PASSWORD, TOTP_SECRET, new_key_line, running_hub
from websockets.asyncio.client import connect

from hub.auth import totp_seeds
from hub.auth.secrets import PASSPHRASE_FILE_ENV as _FILE
from hub.auth.seedcrypt import SeedCipher
from hub.datadir import DataDir
from hub.storage.api import User, Users
from hub.storage.sqlite import SQLiteStorage, open_sqlite
from remoteler import rpc
from remoteler.errors import ConfigError, RemotelerError

PASSPHRASE = b"a long CA passphrase for tests"


class Opened:
    """The hub's storage with the TOTP seeds sealed as the hub and tctl do (no cipher:
    stored as they come)."""

    def __init__(self, storage: SQLiteStorage, seeds: SeedCipher | None, raw: Users) -> None:
        self.storage, self.seeds, self.raw = storage, seeds, raw
        self.users = storage.users

    async def migrate_totp_seeds(self) -> int:
        return await totp_seeds.migrate(self.raw, self.seeds)

    async def close(self) -> None:
        await self.storage.close()


async def _open(path: Path, seeds: SeedCipher | None = None) -> Opened:
    storage = await open_sqlite(path.parent)
    try:
        raw = await totp_seeds.seal(storage, seeds)
    except BaseException:
        await storage.close()
        raise
    return Opened(storage, seeds, raw)


def test_seed_cipher_binds_the_seed_to_its_user_and_passphrase() -> None:
    cipher = SeedCipher(PASSPHRASE)
    stored = cipher.encrypt(TOTP_SECRET, "carol")
    assert TOTP_SECRET not in stored and cipher.encrypt(stored, "carol") == stored
    assert cipher.decrypt(stored, "carol") == TOTP_SECRET
    assert cipher.decrypt(TOTP_SECRET, "carol") == TOTP_SECRET  # not yet migrated
    with pytest.raises(ConfigError, match="cannot decrypt the TOTP seed of user 'mallory'"):
        cipher.decrypt(stored, "mallory")  # copied into another user's row
    with pytest.raises(ConfigError, match="wrong CA passphrase"):
        SeedCipher(b"another passphrase").decrypt(stored, "carol")


async def test_migration_encrypts_plain_seeds_and_a_hub_without_passphrase_refuses(
    tmp_path: Path,
) -> None:
    path = tmp_path / "hub.db"
    plain = await _open(path)
    try:
        await plain.users.put(User("carol", ("access",), ("pi",), None, TOTP_SECRET, 0, 0.0))
        assert await plain.migrate_totp_seeds() == 0  # no passphrase: left as it is
    finally:
        await plain.close()
    assert TOTP_SECRET.encode() in _all_bytes(path)

    cipher = SeedCipher(PASSPHRASE)
    backend = await _open(path, cipher)
    try:
        assert await backend.migrate_totp_seeds() == 1
        assert await backend.migrate_totp_seeds() == 0  # done once
        user = await backend.users.get("carol")
        assert user is not None and user.totp_secret == TOTP_SECRET
    finally:
        await backend.close()
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT totp_secret FROM users").fetchone()
    assert stored.startswith("enc1:")
    assert TOTP_SECRET.encode() not in _all_bytes(path), "the old plain seed is still on disk"

    backend = await _open(path)
    try:
        with pytest.raises(ConfigError, match="start the hub with --ca-passphrase-file"):
            await backend.migrate_totp_seeds()
        user = await backend.users.get("carol")  # opaque without the passphrase
        assert user is not None and user.totp_secret == stored
        await backend.users.put(user)  # written back unchanged, not wiped
    finally:
        await backend.close()
    backend = await _open(path, cipher)
    try:
        user = await backend.users.get("carol")
        assert user is not None and user.totp_secret == TOTP_SECRET
    finally:
        await backend.close()


def _all_bytes(path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )


async def test_the_hub_checks_the_passphrase_and_derives_seed_keys_at_start_not_in_a_login(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """scrypt costs ~0.1-0.3 s of CPU: derived on the event loop in a login, it stalls the
    hub and, the first time, answers later for a real name than for an unknown one."""
    path = tmp_path / "hub.db"
    tctl = await _open(path, SeedCipher(PASSPHRASE))  # `tctl users add`
    try:
        await tctl.users.put(User("carol", ("access",), ("pi",), None, TOTP_SECRET, 0, 0.0))
    finally:
        await tctl.close()

    wrong = await _open(path, SeedCipher(b"not the CA passphrase"))
    try:  # refused at start, with what to do, rather than in carol's next login
        with pytest.raises(ConfigError, match="wrong CA passphrase"):
            await wrong.migrate_totp_seeds()
    finally:
        await wrong.close()

    from cryptography.hazmat.primitives.kdf import scrypt

    on_loop: list[str] = []
    real_derive = scrypt.Scrypt.derive

    def derive(self: scrypt.Scrypt, key_material: bytes) -> bytes:
        if threading.current_thread() is threading.main_thread():
            on_loop.append("derive")
        return real_derive(self, key_material)

    monkeypatch.setattr(scrypt.Scrypt, "derive", derive)
    hub = await _open(path, SeedCipher(PASSPHRASE))
    try:
        assert await hub.migrate_totp_seeds() == 0
        user = await hub.users.get("carol")  # a login
        assert user is not None and user.totp_secret == TOTP_SECRET
        await hub.users.put(User("dave", ("access",), ("pi",), None, TOTP_SECRET, 0, 0.0))
        assert on_loop == [], "a seed key was derived on the event loop"
    finally:
        await hub.close()
    with sqlite3.connect(path) as db:
        salts = {s.split(":")[1] for (s,) in db.execute("SELECT totp_secret FROM users")}
    assert len(salts) == 1, "every writer should reuse the salt in the database (one key)"


def test_tctl_needs_no_passphrase_and_exits(tmp_path: Path) -> None:
    """The hub encrypts the CA keys and the seeds with the passphrase; tctl, a client of
    the hub's RPC, neither reads it nor opens the database: without a running hub it
    says so in one line and exits, with or without a (wrong) passphrase."""
    data = DataDir(tmp_path / "data", passphrase=PASSPHRASE)
    data.init("test")
    wrong = tmp_path / "wrong"
    wrong.write_text("not the CA passphrase\n")
    wrong.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTELER_CA_PASSPHRASE")}
    tctl = str(Path(sys.executable).with_name("tctl"))
    for extra in ({}, {_FILE: str(wrong)}):
        try:
            proc = subprocess.run(
                [tctl, "--data-dir", str(data.path), "users", "add", "bob", "--logins", "pi"],
                env={**env, **extra},
                capture_output=True,
                text=True,
                timeout=20,
            )
        except subprocess.TimeoutExpired:
            raise AssertionError("tctl printed its error but did not exit") from None
        assert proc.returncode != 0 and "hub is not running" in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not data.db_path.exists()  # never opened, so never created


async def test_a_hub_started_with_a_wrong_passphrase_leaves_its_plain_ca_keys_alone(
    tmp_path: Path,
) -> None:
    """Plain CA keys next to encrypted seeds (a restored backup): a start with a mistyped
    passphrase must refuse before it encrypts the CA keys with it, one way."""
    data = DataDir(tmp_path / "data")
    data.init("test")
    backend = await _open(data.db_path, SeedCipher(PASSPHRASE))
    try:
        await backend.users.put(User("carol", ("access",), ("pi",), None, TOTP_SECRET, 0, 0.0))
    finally:
        await backend.close()
    keys = {p: p.read_bytes() for p in data.ca_dir.glob("*_ca.key")}
    wrong = tmp_path / "wrong"
    wrong.write_text("not the CA passphrase\n")
    wrong.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if not k.startswith("REMOTELER_CA_PASSPHRASE")}
    proc = subprocess.run(
        [str(Path(sys.executable).with_name("hub")), "start", "--data-dir", str(data.path),
         "--listen", "127.0.0.1:0", "--ca-passphrase-file", str(wrong)],
        env=env, capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert proc.returncode != 0, proc.stderr
    assert "cannot decrypt the TOTP seed of user 'carol'" in proc.stderr, proc.stderr
    assert keys and all(p.read_bytes() == k for p, k in keys.items()), (
        "the CA keys were encrypted with the wrong passphrase"
    )


async def test_a_seed_that_does_not_decrypt_is_answered_as_an_unknown_name(
    tmp_path: Path,
) -> None:
    """A row altered while the hub runs (a seed moved from another user's row): the
    error names the user, so a client with no credentials must not read it."""
    async with running_hub(tmp_path) as hub:
        await hub.auth.add_user("carol", ["access"], ["pi"], PASSWORD, TOTP_SECRET)
        cipher = SeedCipher(PASSPHRASE)
        raw = await totp_seeds.seal(hub.storage, cipher)  # the hub runs with the passphrase
        carol = await raw.get("carol")
        assert carol is not None
        await raw.put(replace(carol, totp_secret=cipher.encrypt(TOTP_SECRET, "mallory")))
        _, pub = new_key_line()
        answers = []
        async with connect(
            hub.url("/v1/rpc"),
            ssl=hub.tls(),
            compression=None,
            subprotocols=[rpc.SUBPROTOCOL],  # type: ignore[list-item]
            open_timeout=10,
            close_timeout=1,
        ) as ws:
            client = rpc.RpcClient(ws)
            for name in ("carol", "nosuchuser"):
                with pytest.raises(RemotelerError) as info:
                    await client.call(
                        "login", user=name, password="p" * 12, otp="123456", public_key=pub
                    )
                answers.append(str(info.value))
            with pytest.raises(RemotelerError) as info:
                await client.call("invite.info", user="carol", invite="0" * 32)
            answers.append(str(info.value))
        assert answers[0] == answers[1], answers
        assert not any("carol" in a or "passphrase" in a for a in answers), answers
