"""TOTP seeds encrypted with the CA passphrase (hub/seedcrypt.py), against a real SQLite
file; the end-to-end path (hub start, tctl, tsh) is in tests/e2e/test_totp_at_rest.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from hubkit import TOTP_SECRET

from hub.backend import SQLiteBackend, User
from hub.seedcrypt import SeedCipher
from remoteler.errors import ConfigError

PASSPHRASE = b"a long CA passphrase for tests"


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
    plain = await SQLiteBackend.open(path)
    try:
        await plain.put_user(User("carol", ("access",), ("pi",), None, TOTP_SECRET, 0, 0.0))
        assert await plain.migrate_totp_seeds() == 0  # no passphrase: left as it is
    finally:
        await plain.close()
    assert TOTP_SECRET.encode() in _all_bytes(path)

    cipher = SeedCipher(PASSPHRASE)
    backend = await SQLiteBackend.open(path, cipher)
    try:
        assert await backend.migrate_totp_seeds() == 1
        assert await backend.migrate_totp_seeds() == 0  # done once
        user = await backend.get_user("carol")
        assert user is not None and user.totp_secret == TOTP_SECRET
    finally:
        await backend.close()
    with sqlite3.connect(path) as db:
        (stored,) = db.execute("SELECT totp_secret FROM users").fetchone()
    assert stored.startswith("enc1:")
    assert TOTP_SECRET.encode() not in _all_bytes(path), "the old plain seed is still on disk"

    backend = await SQLiteBackend.open(path)
    try:
        with pytest.raises(ConfigError, match="start the hub with --ca-passphrase-file"):
            await backend.migrate_totp_seeds()
        user = await backend.get_user("carol")  # opaque without the passphrase
        assert user is not None and user.totp_secret == stored
        await backend.put_user(user)  # written back unchanged, not wiped
    finally:
        await backend.close()
    backend = await SQLiteBackend.open(path, cipher)
    try:
        user = await backend.get_user("carol")
        assert user is not None and user.totp_secret == TOTP_SECRET
    finally:
        await backend.close()


def _all_bytes(path: Path) -> bytes:
    return b"".join(
        p.read_bytes() for p in (path, Path(f"{path}-wal"), Path(f"{path}-shm")) if p.exists()
    )
