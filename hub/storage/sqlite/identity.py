"""Users, roles, join tokens, invites and the failed-login guard in ``hub.db``."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import aiosqlite

from hub.storage.api import GuardPolicy, LoginGuardRow, Token, User
from hub.storage.sqlite.conn import Conn
from remoteler.access import Role


def _user(row: aiosqlite.Row) -> User:
    return User(
        name=row["name"],
        roles=tuple(json.loads(row["roles"])),
        logins=tuple(json.loads(row["logins"])),
        password_hash=row["password_hash"],
        totp_secret=row["totp_secret"],
        totp_last_step=row["totp_last_step"],
        created=row["created"],
        connector=row["connector"],
        traits=_traits(row["traits"]),
        expires=row["expires"],
    )


def _traits_json(traits: Mapping[str, Sequence[str]]) -> str:
    """A user's traits as stored: a JSON object of lists (sorted keys: stable rows)."""
    return json.dumps({k: list(v) for k, v in traits.items()}, sort_keys=True)


def _traits(text: str | None) -> dict[str, tuple[str, ...]]:
    return {k: tuple(v) for k, v in json.loads(text or "{}").items()}


def _token(row: aiosqlite.Row) -> Token:
    return Token(
        token_hash=row["token_hash"],
        kind=row["kind"],
        labels=json.loads(row["labels"]),
        created=row["created"],
        expires=row["expires"],
        used_by=row["used_by"],
    )


def _guard(row: aiosqlite.Row) -> LoginGuardRow:
    return LoginGuardRow(row["user"], row["failures"], row["first_failure"], row["locked_until"])


class SQLiteUsers:
    """TOTP seeds are stored as given (the hub encrypts them first: hub/auth/totp_seeds.py)."""

    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def get(self, name: str) -> User | None:
        row = await self._c.one("SELECT * FROM users WHERE name = ?", (name,))
        return _user(row) if row else None

    async def all(self) -> list[User]:
        return [_user(r) for r in await self._c.all("SELECT * FROM users ORDER BY name")]

    async def put(self, user: User) -> None:
        before = await self._c.one("SELECT totp_secret FROM users WHERE name = ?", (user.name,))
        await self._c.write(
            "INSERT OR REPLACE INTO users (name, roles, logins, password_hash, totp_secret,"
            " totp_last_step, created, connector, traits, expires)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                user.name,
                json.dumps(list(user.roles)),
                json.dumps(list(user.logins)),
                user.password_hash,
                user.totp_secret,
                user.totp_last_step,
                user.created,
                user.connector,
                _traits_json(user.traits),
                user.expires,
            ),
        )
        if before is not None and before[0] not in (None, user.totp_secret):
            await self._c.checkpoint()  # the replaced seed's old page leaves the WAL
        self._c.publish("users", user.name)

    async def delete(self, name: str) -> bool:
        deleted = await self._c.write("DELETE FROM users WHERE name = ?", (name,)) > 0
        if deleted:
            self._c.publish("users", name)
        return deleted

    async def record_totp_step(self, name: str, step: int) -> bool:
        return (
            await self._c.write(
                "UPDATE users SET totp_last_step = ? WHERE name = ? AND totp_last_step < ?",
                (step, name, step),
            )
            == 1
        )


class SQLiteRoles:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def get(self, name: str) -> Role | None:
        row = await self._c.one("SELECT spec FROM roles WHERE name = ?", (name,))
        return Role.from_dict(json.loads(row["spec"])) if row else None

    async def all(self) -> list[Role]:
        rows = await self._c.all("SELECT spec FROM roles ORDER BY name")
        return [Role.from_dict(json.loads(r["spec"])) for r in rows]

    async def put(self, role: Role) -> None:
        await self._c.write(
            "INSERT OR REPLACE INTO roles VALUES (?, ?)", (role.name, json.dumps(role.to_dict()))
        )
        self._c.publish("roles", role.name)

    async def delete(self, name: str) -> bool:
        deleted = await self._c.write("DELETE FROM roles WHERE name = ?", (name,)) > 0
        if deleted:
            self._c.publish("roles", name)
        return deleted


class SQLiteTokens:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def add(self, token: Token) -> None:
        await self._c.write(
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
        self._c.publish("tokens", token.token_id)

    async def get(self, token_hash: str) -> Token | None:
        row = await self._c.one("SELECT * FROM tokens WHERE token_hash = ?", (token_hash,))
        return _token(row) if row else None

    async def all(self) -> list[Token]:
        return [_token(r) for r in await self._c.all("SELECT * FROM tokens ORDER BY created")]

    async def delete(self, token_id: str) -> int:
        if len(token_id) != 12:  # the id `tokens ls` shows: never a shorter prefix
            return 0
        count = await self._c.write(
            "DELETE FROM tokens WHERE substr(token_hash, 1, 12) = ?", (token_id,)
        )
        if count:
            self._c.publish("tokens", token_id)
        return count

    async def consume(self, token_hash: str, used_by: str, now: float) -> bool:
        used = (
            await self._c.write(
                "UPDATE tokens SET used_by = ? WHERE token_hash = ? AND used_by IS NULL "
                "AND expires > ?",
                (used_by, token_hash, now),
            )
            == 1
        )
        if used:
            self._c.publish("tokens", token_hash[:12])
        return used


class SQLiteInvites:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def add(self, token_hash: str, user: str, expires: float) -> None:
        await self._c.write("INSERT INTO invites VALUES (?, ?, ?)", (token_hash, user, expires))

    async def check(self, token_hash: str, user: str, now: float) -> bool:
        row = await self._c.one(
            "SELECT 1 FROM invites WHERE token_hash = ? AND user = ? AND expires > ?",
            (token_hash, user, now),
        )
        return row is not None

    async def consume(self, token_hash: str, user: str, now: float) -> bool:
        return (
            await self._c.write(
                "DELETE FROM invites WHERE token_hash = ? AND user = ? AND expires > ?",
                (token_hash, user, now),
            )
            == 1
        )


#: One statement counts a failure (SQLite >= 3.35 for RETURNING). In DO UPDATE the
#: bare column names are the stored row: ``:expired`` = its window passed.
_FAIL = """
INSERT INTO login_guard (user, failures, first_failure, locked_until)
VALUES (:user,
        CASE WHEN 1 >= :threshold THEN 0 ELSE 1 END,
        :now,
        CASE WHEN 1 >= :threshold THEN :now + :lockout END)
ON CONFLICT (user) DO UPDATE SET
    failures = CASE
        WHEN (CASE WHEN :now - first_failure > :window THEN 1 ELSE failures + 1 END)
             >= :threshold THEN 0
        WHEN :now - first_failure > :window THEN 1
        ELSE failures + 1 END,
    first_failure = CASE
        WHEN (CASE WHEN :now - first_failure > :window THEN 1 ELSE failures + 1 END)
             >= :threshold THEN :now
        WHEN :now - first_failure > :window THEN :now
        ELSE first_failure END,
    locked_until = CASE
        WHEN (CASE WHEN :now - first_failure > :window THEN 1 ELSE failures + 1 END)
             >= :threshold THEN :now + :lockout
        WHEN :now - first_failure > :window THEN NULL
        ELSE locked_until END
RETURNING user, failures, first_failure, locked_until
"""


class SQLiteLoginGuards:
    def __init__(self, conn: Conn) -> None:
        self._c = conn

    async def get(self, user: str) -> LoginGuardRow | None:
        row = await self._c.one("SELECT * FROM login_guard WHERE user = ?", (user,))
        return _guard(row) if row else None

    async def fail(self, user: str, now: float, policy: GuardPolicy) -> LoginGuardRow:
        rows = await self._c.returning(
            _FAIL,
            {
                "user": user,
                "now": now,
                "window": policy.window,
                "threshold": policy.threshold,
                "lockout": policy.lockout,
            },
        )
        return _guard(rows[0])

    async def clear(self, user: str) -> bool:
        return await self._c.write("DELETE FROM login_guard WHERE user = ?", (user,)) > 0

    async def prune(self, window_start: float, now: float, limit: int) -> int:
        return await self._c.write(
            "DELETE FROM login_guard WHERE rowid IN (SELECT rowid FROM login_guard "
            "WHERE first_failure < ? AND (locked_until IS NULL OR locked_until <= ?) LIMIT ?)",
            (window_start, now, limit),
        )
