"""The hub's state behind one small interface; SQLite (aiosqlite, WAL) is the default.

Secrets are stored only as verifiers: join tokens and invites as SHA-256
digests, passwords as Argon2id hashes. The TOTP seed is the one secret kept
(it must be, to verify codes), in a 0600 database file, encrypted with the CA
passphrase when there is one (hub/seedcrypt.py).
"""

from __future__ import annotations

import asyncio
import json
import os
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol

import aiosqlite

from hub.seedcrypt import SeedCipher, is_encrypted, salt_of
from remoteler.access import PRESET_ROLES, Role
from remoteler.errors import ConfigError
from remoteler.locks import Lock

SCHEMA = """
CREATE TABLE IF NOT EXISTS users (
    name TEXT PRIMARY KEY,
    roles TEXT NOT NULL,
    logins TEXT NOT NULL,
    password_hash TEXT,
    totp_secret TEXT,
    totp_last_step INTEGER NOT NULL DEFAULT 0,
    created REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS roles (name TEXT PRIMARY KEY, spec TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS tokens (
    token_hash TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    labels TEXT NOT NULL,
    created REAL NOT NULL,
    expires REAL NOT NULL,
    used_by TEXT
);
CREATE TABLE IF NOT EXISTS invites (
    token_hash TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS nodes (
    id TEXT PRIMARY KEY,
    name TEXT UNIQUE NOT NULL,
    labels TEXT NOT NULL,
    version TEXT NOT NULL DEFAULT '',
    online INTEGER NOT NULL DEFAULT 0,
    last_seen REAL,
    joined REAL NOT NULL,
    token_labels TEXT NOT NULL DEFAULT '{}',
    audit_pending INTEGER NOT NULL DEFAULT 0,
    audit_oldest REAL,
    recording TEXT NOT NULL DEFAULT 'off',
    clock_skew REAL
);
CREATE TABLE IF NOT EXISTS locks (
    id TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    target TEXT NOT NULL,
    message TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    expires REAL,
    created_by TEXT NOT NULL DEFAULT ''
);
CREATE TABLE IF NOT EXISTS login_guard (
    user TEXT PRIMARY KEY,
    failures INTEGER NOT NULL,
    first_failure REAL NOT NULL,
    locked_until REAL
);
"""
#: Columns added after a table was first created: (table, column, definition).
#: ``open`` adds the missing ones to an older database (CREATE TABLE IF NOT EXISTS
#: leaves an existing table as it was).
MIGRATIONS = (
    ("nodes", "recording", "TEXT NOT NULL DEFAULT 'off'"),
    ("nodes", "clock_skew", "REAL"),
)
#: A node's session mode: "off" = end to end (the hub only relays bytes), "proxy" =
#: the hub terminates SSH and records the session (hub/recording/proxy.py).
RECORDING_MODES = ("off", "proxy")


@dataclass(frozen=True)
class User:
    name: str
    roles: tuple[str, ...]
    logins: tuple[str, ...]
    password_hash: str | None
    totp_secret: str | None
    totp_last_step: int
    created: float


@dataclass(frozen=True)
class Token:
    token_hash: str
    kind: str
    labels: Mapping[str, str]
    created: float
    expires: float
    used_by: str | None

    @property
    def token_id(self) -> str:
        """Public handle of a token (a digest prefix): safe to list and log."""
        return self.token_hash[:12]


@dataclass(frozen=True)
class Node:
    id: str
    name: str
    labels: Mapping[str, str] = field(default_factory=dict)
    version: str = ""
    online: bool = False
    last_seen: float | None = None
    joined: float = 0.0
    #: labels from the join token: they win over what the agent reports
    token_labels: Mapping[str, str] = field(default_factory=dict)
    #: events waiting in the device's outbox, and the time of the oldest (heartbeat)
    audit_pending: int = 0
    audit_oldest: float | None = None
    #: one of :data:`RECORDING_MODES`
    recording: str = "off"
    #: the device's clock minus the hub's, seconds, from its last heartbeat (None:
    #: under a minute, or not reported; docs/tunnels.md "Clock skew")
    clock_skew: float | None = None

    def effective_labels(self, reported: Mapping[str, str]) -> dict[str, str]:
        return {**dict(reported), **dict(self.token_labels)}


@dataclass(frozen=True)
class Beat:
    """What one heartbeat changes in a node's row."""

    node_id: str
    last_seen: float
    labels: Mapping[str, str]
    version: str = ""
    audit_pending: int = 0
    audit_oldest: float | None = None
    clock_skew: float | None = None


@dataclass(frozen=True)
class LoginGuardRow:
    """Failed logins for one user name (known or not), and its lockout."""

    user: str
    failures: int
    first_failure: float
    locked_until: float | None = None


class Backend(Protocol):
    """What the hub needs from storage; every method is one transaction."""

    async def close(self) -> None: ...
    async def get_user(self, name: str) -> User | None: ...
    async def list_users(self) -> list[User]: ...
    async def put_user(self, user: User) -> None: ...
    async def delete_user(self, name: str) -> bool: ...
    async def record_totp_step(self, name: str, step: int) -> bool: ...
    async def get_role(self, name: str) -> Role | None: ...
    async def list_roles(self) -> list[Role]: ...
    async def put_role(self, role: Role) -> None: ...
    async def delete_role(self, name: str) -> bool: ...
    async def add_token(self, token: Token) -> None: ...
    async def get_token(self, token_hash: str) -> Token | None: ...
    async def list_tokens(self) -> list[Token]: ...
    async def delete_token(self, token_id: str) -> int: ...
    async def consume_token(self, token_hash: str, used_by: str, now: float) -> bool: ...
    async def add_invite(self, token_hash: str, user: str, expires: float) -> None: ...
    async def check_invite(self, token_hash: str, user: str, now: float) -> bool: ...
    async def consume_invite(self, token_hash: str, user: str, now: float) -> bool: ...
    async def add_node(self, node: Node) -> None: ...
    async def get_node(self, key: str) -> Node | None: ...
    async def list_nodes(self) -> list[Node]: ...
    async def delete_node(self, key: str) -> bool: ...
    async def set_node_recording(self, key: str, mode: str) -> Node | None: ...
    async def node_recordings(self, ids: Sequence[str]) -> dict[str, str]: ...
    async def outside_writes(self) -> int: ...
    async def update_heartbeats(self, beats: Sequence[Beat]) -> list[str]: ...
    async def mark_all_offline(self) -> None: ...
    async def set_nodes_online(self, changes: Sequence[tuple[str, bool, float]]) -> None: ...
    async def add_lock(self, lock: Lock) -> None: ...
    async def list_locks(self, now: float) -> list[Lock]: ...
    async def delete_lock(self, lock_id: str) -> Lock | None: ...
    async def get_login_guard(self, user: str) -> LoginGuardRow | None: ...
    async def put_login_guard(self, row: LoginGuardRow) -> None: ...
    async def clear_login_guard(self, user: str) -> bool: ...
    async def prune_login_guard(self, window_start: float, now: float, limit: int) -> int: ...


def _user(row: aiosqlite.Row) -> User:
    return User(
        name=row["name"],
        roles=tuple(json.loads(row["roles"])),
        logins=tuple(json.loads(row["logins"])),
        password_hash=row["password_hash"],
        totp_secret=row["totp_secret"],
        totp_last_step=row["totp_last_step"],
        created=row["created"],
    )


def _token(row: aiosqlite.Row) -> Token:
    return Token(
        token_hash=row["token_hash"],
        kind=row["kind"],
        labels=json.loads(row["labels"]),
        created=row["created"],
        expires=row["expires"],
        used_by=row["used_by"],
    )


def _node(row: aiosqlite.Row, loads: Callable[[str], Any] = json.loads) -> Node:
    return Node(
        id=row["id"],
        name=row["name"],
        labels=loads(row["labels"]),
        version=row["version"],
        online=bool(row["online"]),
        last_seen=row["last_seen"],
        joined=row["joined"],
        token_labels=loads(row["token_labels"]),
        audit_pending=row["audit_pending"],
        audit_oldest=row["audit_oldest"],
        recording=row["recording"],
        clock_skew=row["clock_skew"],
    )


def _labels_loader() -> Callable[[str], dict[str, str]]:
    """``json.loads`` for the label maps of many rows: a fleet has few distinct label
    sets, so each distinct text is parsed once and every row gets its own copy."""
    parsed: dict[str, dict[str, str]] = {}

    def loads(text: str) -> dict[str, str]:
        labels = parsed.get(text)
        if labels is None:
            labels = parsed[text] = json.loads(text)
        return dict(labels)  # label maps are flat: a shallow copy is a whole copy

    return loads


def _lock(row: aiosqlite.Row) -> Lock:
    return Lock(
        id=row["id"],
        kind=row["kind"],
        target=row["target"],
        message=row["message"],
        created=row["created"],
        expires=row["expires"],
        created_by=row["created_by"],
    )


async def _migrate(db: aiosqlite.Connection) -> None:
    """Add the :data:`MIGRATIONS` columns an older database lacks (idempotent)."""
    for table, column, definition in MIGRATIONS:
        async with db.execute(f"PRAGMA table_info({table})") as cur:
            have = {row[1] for row in await cur.fetchall()}
        if column in have:
            continue
        try:  # fixed names from MIGRATIONS, never user input
            await db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {definition}")
        except sqlite3.OperationalError as exc:  # tctl and the hub opening it together
            if "duplicate column" not in str(exc):
                raise


class SQLiteBackend:
    """The embedded default: one SQLite file in WAL mode, shared with ``tctl``."""

    def __init__(self, db: aiosqlite.Connection, seeds: SeedCipher | None = None) -> None:
        self._db = db
        #: encrypts TOTP seeds at rest (hub/seedcrypt.py); None: stored as they come
        self._seeds = seeds

    @classmethod
    async def open(cls, path: Path, seeds: SeedCipher | None = None) -> SQLiteBackend:
        if not path.exists():
            fd = os.open(path, os.O_CREAT | os.O_WRONLY, 0o600)
            os.close(fd)
        elif path.stat().st_mode & 0o077:
            os.chmod(path, 0o600)  # holds TOTP seeds: never readable by others
        db = await aiosqlite.connect(path, timeout=30)
        try:  # a damaged file: close, or its thread keeps the process from exiting
            db.row_factory = aiosqlite.Row
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=NORMAL")
            await db.execute("PRAGMA busy_timeout=30000")
            await db.execute("PRAGMA secure_delete=ON")  # a replaced TOTP seed leaves no trace
            await db.executescript(SCHEMA)
            await _migrate(db)
            for role in PRESET_ROLES:
                await db.execute(
                    "INSERT OR IGNORE INTO roles (name, spec) VALUES (?, ?)",
                    (role.name, json.dumps(role.to_dict())),
                )
            await db.commit()
            if seeds is not None:  # write with the salt already there: one key for all seeds
                row = await (
                    await db.execute(
                        "SELECT totp_secret FROM users WHERE totp_secret LIKE 'enc1:%' LIMIT 1"
                    )
                ).fetchone()
                if row is not None and (salt := salt_of(row[0])) is not None:
                    seeds.use_salt(salt)
        except BaseException:
            await db.close()
            raise
        return cls(db, seeds)

    async def close(self) -> None:
        await self._db.close()

    async def _one(self, sql: str, args: Sequence[Any]) -> aiosqlite.Row | None:
        async with self._db.execute(sql, args) as cur:
            return await cur.fetchone()

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        async with self._db.execute(sql, args) as cur:
            return list(await cur.fetchall())

    async def _write(self, sql: str, args: Sequence[Any]) -> int:
        cur = await self._db.execute(sql, args)
        await self._db.commit()
        return cur.rowcount

    # users
    async def get_user(self, name: str) -> User | None:
        row = await self._one("SELECT * FROM users WHERE name = ?", (name,))
        return await self._seed_out(_user(row)) if row else None

    async def list_users(self) -> list[User]:
        rows = await self._all("SELECT * FROM users ORDER BY name")
        return [await self._seed_out(_user(r)) for r in rows]

    async def _seed_out(self, user: User) -> User:
        """Decrypt the TOTP seed; without a cipher an encrypted one stays as it is, opaque
        (put_user writes it back unchanged)."""
        if self._seeds is None or user.totp_secret is None:
            return user
        await self._seed_key(salt_of(user.totp_secret))
        return replace(user, totp_secret=self._seeds.decrypt(user.totp_secret, user.name))

    async def _seed_key(self, salt: bytes | None) -> None:
        """Derive a missing seed key in a thread: scrypt must not stall the event loop."""
        if self._seeds is not None and salt is not None and not self._seeds.has_key(salt):
            await asyncio.to_thread(self._seeds.derive, salt)

    async def migrate_totp_seeds(self) -> int:
        """Encrypt every plain TOTP seed (with a cipher); return how many. Without a cipher,
        refuse to go on if any seed is encrypted: the hub could not check codes."""
        rows = await self._all("SELECT name, totp_secret FROM users WHERE totp_secret IS NOT NULL")
        if self._seeds is None:
            if any(is_encrypted(r["totp_secret"]) for r in rows):
                raise ConfigError(
                    "the TOTP seeds in the hub database are encrypted: start the hub with "
                    "--ca-passphrase-file FILE (the CA passphrase)"
                )
            return 0
        await self.check_totp_seeds()
        plain = [(r["name"], r["totp_secret"]) for r in rows if not is_encrypted(r["totp_secret"])]
        for name, seed in plain:
            await self._db.execute(
                "UPDATE users SET totp_secret = ? WHERE name = ? AND totp_secret = ?",
                (self._seeds.encrypt(seed, name), name, seed),
            )
        await self._db.commit()
        if plain:  # the plain seeds' old pages leave the WAL (secure_delete zeroed them)
            await self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return len(plain)

    async def check_totp_seeds(self) -> None:
        """With a cipher: derive every salt's key now (not in a login) and decrypt one seed
        per salt, so a wrong passphrase raises :class:`ConfigError` here, at start."""
        if self._seeds is None:
            return
        rows = await self._all(
            "SELECT name, totp_secret FROM users WHERE totp_secret LIKE 'enc1:%'"
        )
        checked: set[bytes | None] = set()
        for r in rows:
            salt = salt_of(r["totp_secret"])
            if salt not in checked or salt is None:
                await self._seed_key(salt)
                self._seeds.decrypt(r["totp_secret"], r["name"])
                checked.add(salt)
        await self._seed_key(self._seeds.write_salt())

    async def put_user(self, user: User) -> None:
        await self._write(
            "INSERT OR REPLACE INTO users VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                user.name,
                json.dumps(list(user.roles)),
                json.dumps(list(user.logins)),
                user.password_hash,
                await self._seed_in(user),
                user.totp_last_step,
                user.created,
            ),
        )

    async def delete_user(self, name: str) -> bool:
        return await self._write("DELETE FROM users WHERE name = ?", (name,)) > 0

    async def _seed_in(self, user: User) -> str | None:
        if self._seeds is None or user.totp_secret is None:
            return user.totp_secret
        await self._seed_key(self._seeds.write_salt())
        return self._seeds.encrypt(user.totp_secret, user.name)

    async def record_totp_step(self, name: str, step: int) -> bool:
        """Atomically accept a TOTP time step only if newer than the last one used."""
        return (
            await self._write(
                "UPDATE users SET totp_last_step = ? WHERE name = ? AND totp_last_step < ?",
                (step, name, step),
            )
            == 1
        )

    # roles
    async def get_role(self, name: str) -> Role | None:
        row = await self._one("SELECT spec FROM roles WHERE name = ?", (name,))
        return Role.from_dict(json.loads(row["spec"])) if row else None

    async def list_roles(self) -> list[Role]:
        rows = await self._all("SELECT spec FROM roles ORDER BY name")
        return [Role.from_dict(json.loads(r["spec"])) for r in rows]

    async def put_role(self, role: Role) -> None:
        await self._write(
            "INSERT OR REPLACE INTO roles VALUES (?, ?)", (role.name, json.dumps(role.to_dict()))
        )

    async def delete_role(self, name: str) -> bool:
        return await self._write("DELETE FROM roles WHERE name = ?", (name,)) > 0

    # join tokens
    async def add_token(self, token: Token) -> None:
        await self._write(
            "INSERT INTO tokens VALUES (?, ?, ?, ?, ?, ?)",
            (
                token.token_hash,
                token.kind,
                json.dumps(dict(token.labels)),
                token.created,
                token.expires,
                token.used_by,
            ),
        )

    async def get_token(self, token_hash: str) -> Token | None:
        row = await self._one("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(row) if row else None

    async def list_tokens(self) -> list[Token]:
        return [_token(r) for r in await self._all("SELECT * FROM tokens ORDER BY created")]

    async def delete_token(self, token_id: str) -> int:
        """Delete the token whose id (the 12-hex digest prefix ``tokens ls`` shows) matches."""
        if len(token_id) != 12:
            return 0
        return await self._write(
            "DELETE FROM tokens WHERE substr(token_hash, 1, 12) = ?", (token_id,)
        )

    async def consume_token(self, token_hash: str, used_by: str, now: float) -> bool:
        """Single use: mark the token used in the same statement that checks it."""
        return (
            await self._write(
                "UPDATE tokens SET used_by = ? WHERE token_hash = ? AND used_by IS NULL "
                "AND expires > ?",
                (used_by, token_hash, now),
            )
            == 1
        )

    # invites
    async def add_invite(self, token_hash: str, user: str, expires: float) -> None:
        await self._write("INSERT INTO invites VALUES (?, ?, ?)", (token_hash, user, expires))

    async def check_invite(self, token_hash: str, user: str, now: float) -> bool:
        row = await self._one(
            "SELECT 1 FROM invites WHERE token_hash = ? AND user = ? AND expires > ?",
            (token_hash, user, now),
        )
        return row is not None

    async def consume_invite(self, token_hash: str, user: str, now: float) -> bool:
        return (
            await self._write(
                "DELETE FROM invites WHERE token_hash = ? AND user = ? AND expires > ?",
                (token_hash, user, now),
            )
            == 1
        )

    # nodes
    async def add_node(self, node: Node) -> None:
        await self._write(
            "INSERT INTO nodes (id, name, labels, version, online, last_seen, joined,"
            " token_labels, audit_pending, audit_oldest, recording)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                node.id,
                node.name,
                json.dumps(dict(node.labels)),
                node.version,
                int(node.online),
                node.last_seen,
                node.joined,
                json.dumps(dict(node.token_labels)),
                node.audit_pending,
                node.audit_oldest,
                node.recording,
            ),
        )

    async def get_node(self, key: str) -> Node | None:
        row = await self._one("SELECT * FROM nodes WHERE id = ? OR name = ?", (key, key))
        return _node(row) if row else None

    async def list_nodes(self) -> list[Node]:
        loads = _labels_loader()
        return [_node(r, loads) for r in await self._all("SELECT * FROM nodes ORDER BY name")]

    async def delete_node(self, key: str) -> bool:
        return await self._write("DELETE FROM nodes WHERE id = ? OR name = ?", (key, key)) > 0

    async def set_node_recording(self, key: str, mode: str) -> Node | None:
        """Set a node's recording mode (by id or name); the node as it now is, or None."""
        if mode not in RECORDING_MODES:
            raise ValueError(f"recording mode must be one of {RECORDING_MODES}")
        await self._write(
            "UPDATE nodes SET recording = ? WHERE id = ? OR name = ?", (mode, key, key)
        )
        return await self.get_node(key)

    async def node_recordings(self, ids: Sequence[str]) -> dict[str, str]:
        """node id -> recording mode, for the ids still in the table."""
        unique = set(ids)
        if len(unique) > 32:  # one pass over the table beats many lookups
            rows = await self._all("SELECT id, recording FROM nodes")
        else:
            rows = []
            for node_id in unique:
                row = await self._one("SELECT id, recording FROM nodes WHERE id = ?", (node_id,))
                rows += [row] if row else []
        return {row["id"]: row["recording"] for row in rows if row["id"] in unique}

    async def outside_writes(self) -> int:
        """A number that changes when another connection (``tctl``) commits a write
        (SQLite's ``data_version``); the hub's own writes leave it alone."""
        row = await self._one("PRAGMA data_version", ())
        return int(row[0]) if row else 0

    async def set_nodes_online(self, changes: Sequence[tuple[str, bool, float]]) -> None:
        """Batch of (node id, online, when), one transaction."""
        await self._db.executemany(
            "UPDATE nodes SET online = ?, last_seen = ? WHERE id = ?",
            [(int(online), when, nid) for nid, online, when in changes],
        )
        await self._db.commit()

    async def update_heartbeats(self, beats: Sequence[Beat]) -> list[str]:
        """A batch of heartbeats in one transaction.

        Returns the ids no longer in the table (removed with ``tctl nodes rm``).
        """
        missing = []
        for b in beats:
            cur = await self._db.execute(
                "UPDATE nodes SET last_seen = ?, labels = ?, version = ?, audit_pending = ?, "
                "audit_oldest = ?, clock_skew = ? WHERE id = ?",
                (
                    b.last_seen,
                    json.dumps(dict(b.labels)),
                    b.version,
                    b.audit_pending,
                    b.audit_oldest,
                    b.clock_skew,
                    b.node_id,
                ),
            )
            if cur.rowcount == 0:
                missing.append(b.node_id)
        await self._db.commit()
        return missing

    async def mark_all_offline(self) -> None:
        await self._write("UPDATE nodes SET online = 0 WHERE online = 1", ())

    # locks (hub/auth/locks.py, tctl lock)
    async def add_lock(self, lock: Lock) -> None:
        await self._write(
            "INSERT INTO locks VALUES (?, ?, ?, ?, ?, ?, ?)",
            (
                lock.id,
                lock.kind,
                lock.target,
                lock.message,
                lock.created,
                lock.expires,
                lock.created_by,
            ),
        )

    async def list_locks(self, now: float) -> list[Lock]:
        """Locks in force at ``now``, oldest first (expired ones are left out)."""
        rows = await self._all(
            "SELECT * FROM locks WHERE expires IS NULL OR expires > ? ORDER BY created, id",
            (now,),
        )
        return [_lock(r) for r in rows]

    async def delete_lock(self, lock_id: str) -> Lock | None:
        row = await self._one("SELECT * FROM locks WHERE id = ?", (lock_id,))
        if row is None:
            return None
        await self._write("DELETE FROM locks WHERE id = ?", (lock_id,))
        return _lock(row)

    # login protection (hub/auth/ratelimit.py)
    async def get_login_guard(self, user: str) -> LoginGuardRow | None:
        row = await self._one("SELECT * FROM login_guard WHERE user = ?", (user,))
        if row is None:
            return None
        return LoginGuardRow(
            row["user"], row["failures"], row["first_failure"], row["locked_until"]
        )

    async def put_login_guard(self, row: LoginGuardRow) -> None:
        await self._write(
            "INSERT OR REPLACE INTO login_guard VALUES (?, ?, ?, ?)",
            (row.user, row.failures, row.first_failure, row.locked_until),
        )

    async def clear_login_guard(self, user: str) -> bool:
        return await self._write("DELETE FROM login_guard WHERE user = ?", (user,)) > 0

    async def prune_login_guard(self, window_start: float, now: float, limit: int) -> int:
        """Delete up to ``limit`` rows whose failures began before ``window_start`` and
        that hold no lockout still in force at ``now``; return how many."""
        return await self._write(
            "DELETE FROM login_guard WHERE rowid IN (SELECT rowid FROM login_guard "
            "WHERE first_failure < ? AND (locked_until IS NULL OR locked_until <= ?) LIMIT ?)",
            (window_start, now, limit),
        )


def now() -> float:
    return time.time()
