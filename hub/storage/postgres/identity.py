"""Users, roles, join tokens, invites and the login guard."""

from __future__ import annotations

from psycopg.rows import DictRow
from psycopg.types.json import Jsonb

from hub.storage.api import GuardPolicy, LoginGuardRow, Token, User
from hub.storage.postgres.db import Db, notify
from remoteler.access import Role


def _user(row: DictRow) -> User:
    return User(
        name=row["name"],
        roles=tuple(row["roles"]),
        logins=tuple(row["logins"]),
        password_hash=row["password_hash"],
        totp_secret=row["totp_secret"],
        totp_last_step=row["totp_last_step"],
        created=row["created"],
        connector=row["connector"],
        traits={k: tuple(v) for k, v in (row["traits"] or {}).items()},
        expires=row["expires"],
    )


def _token(row: DictRow) -> Token:
    return Token(
        token_hash=row["token_hash"],
        kind=row["kind"],
        labels=dict(row["labels"]),
        created=row["created"],
        expires=row["expires"],
        used_by=row["used_by"],
    )


def _guard(row: DictRow) -> LoginGuardRow:
    return LoginGuardRow(
        row["username"], row["failures"], row["first_failure"], row["locked_until"]
    )


class PgUsers:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def get(self, name: str) -> User | None:
        row = await self._db.one("SELECT * FROM users WHERE name = %s", (name,))
        return _user(row) if row else None

    async def all(self) -> list[User]:
        return [_user(r) for r in await self._db.all("SELECT * FROM users ORDER BY name")]

    async def put(self, user: User) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO users (name, roles, logins, password_hash, totp_secret,"
                " totp_last_step, created, connector, traits, expires)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)"
                " ON CONFLICT (name) DO UPDATE SET roles = excluded.roles,"
                " logins = excluded.logins, password_hash = excluded.password_hash,"
                " totp_secret = excluded.totp_secret, totp_last_step = excluded.totp_last_step,"
                " created = excluded.created, connector = excluded.connector,"
                " traits = excluded.traits, expires = excluded.expires",
                (
                    user.name,
                    Jsonb(list(user.roles)),
                    Jsonb(list(user.logins)),
                    user.password_hash,
                    user.totp_secret,
                    user.totp_last_step,
                    user.created,
                    user.connector,
                    Jsonb({k: list(v) for k, v in user.traits.items()}),
                    user.expires,
                ),
            )
            await notify(conn, "users", user.name)

    async def delete(self, name: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute("DELETE FROM users WHERE name = %s", (name,))
            if cur.rowcount:
                await notify(conn, "users", name)
            return cur.rowcount > 0

    async def record_totp_step(self, name: str, step: int) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE users SET totp_last_step = %s WHERE name = %s AND totp_last_step < %s",
                (step, name, step),
            )
            return cur.rowcount == 1


class PgRoles:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def get(self, name: str) -> Role | None:
        row = await self._db.one("SELECT spec FROM roles WHERE name = %s", (name,))
        return Role.from_dict(row["spec"]) if row else None

    async def all(self) -> list[Role]:
        rows = await self._db.all("SELECT spec FROM roles ORDER BY name")
        return [Role.from_dict(r["spec"]) for r in rows]

    async def put(self, role: Role) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO roles (name, spec) VALUES (%s, %s)"
                " ON CONFLICT (name) DO UPDATE SET spec = excluded.spec",
                (role.name, Jsonb(role.to_dict())),
            )
            await notify(conn, "roles", role.name)

    async def delete(self, name: str) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute("DELETE FROM roles WHERE name = %s", (name,))
            if cur.rowcount:
                await notify(conn, "roles", name)
            return cur.rowcount > 0


class PgTokens:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def add(self, token: Token) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO tokens (token_hash, kind, labels, created, expires, used_by)"
                " VALUES (%s, %s, %s, %s, %s, %s)",
                (
                    token.token_hash,
                    token.kind,
                    Jsonb(dict(token.labels)),
                    token.created,
                    token.expires,
                    token.used_by,
                ),
            )
            await notify(conn, "tokens", token.token_id)

    async def get(self, token_hash: str) -> Token | None:
        row = await self._db.one("SELECT * FROM tokens WHERE token_hash = %s", (token_hash,))
        return _token(row) if row else None

    async def all(self) -> list[Token]:
        rows = await self._db.all("SELECT * FROM tokens ORDER BY created, token_hash")
        return [_token(r) for r in rows]

    async def delete(self, token_id: str) -> int:
        if len(token_id) != 12:
            return 0
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "DELETE FROM tokens WHERE substr(token_hash, 1, 12) = %s", (token_id,)
            )
            if cur.rowcount:
                await notify(conn, "tokens", token_id)
            return cur.rowcount

    async def consume(self, token_hash: str, used_by: str, now: float) -> bool:
        async with self._db.tx() as conn:
            cur = await conn.execute(
                "UPDATE tokens SET used_by = %s WHERE token_hash = %s AND used_by IS NULL"
                " AND expires > %s RETURNING token_hash",
                (used_by, token_hash, now),
            )
            won = await cur.fetchone() is not None
            if won:
                await notify(conn, "tokens", token_hash[:12])
            return won


class PgInvites:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def add(self, token_hash: str, user: str, expires: float) -> None:
        async with self._db.tx() as conn:
            await conn.execute(
                "INSERT INTO invites (token_hash, username, expires) VALUES (%s, %s, %s)",
                (token_hash, user, expires),
            )

    async def check(self, token_hash: str, user: str, now: float) -> bool:
        row = await self._db.one(
            "SELECT 1 AS ok FROM invites WHERE token_hash = %s AND username = %s AND expires > %s",
            (token_hash, user, now),
        )
        return row is not None

    async def consume(self, token_hash: str, user: str, now: float) -> bool:
        row = await self._db.one(
            "DELETE FROM invites WHERE token_hash = %s AND username = %s AND expires > %s"
            " RETURNING token_hash",
            (token_hash, user, now),
        )
        return row is not None


#: One statement: count a failure (restarting a count older than the window), lock at
#: the threshold. Every SET expression reads the row as it was (PostgreSQL's rule).
_FAIL = """
INSERT INTO login_guard AS g (username, failures, first_failure, locked_until)
VALUES (%(user)s,
        CASE WHEN 1 >= %(threshold)s THEN 0 ELSE 1 END,
        %(now)s,
        CASE WHEN 1 >= %(threshold)s THEN %(now)s + %(lockout)s END)
ON CONFLICT (username) DO UPDATE SET
    failures = CASE
        WHEN (CASE WHEN %(now)s - g.first_failure > %(window)s THEN 0 ELSE g.failures END) + 1
             >= %(threshold)s THEN 0
        ELSE (CASE WHEN %(now)s - g.first_failure > %(window)s THEN 0 ELSE g.failures END) + 1
    END,
    first_failure = CASE
        WHEN (CASE WHEN %(now)s - g.first_failure > %(window)s THEN 0 ELSE g.failures END) + 1
             >= %(threshold)s THEN %(now)s
        WHEN %(now)s - g.first_failure > %(window)s THEN %(now)s
        ELSE g.first_failure
    END,
    locked_until = CASE
        WHEN (CASE WHEN %(now)s - g.first_failure > %(window)s THEN 0 ELSE g.failures END) + 1
             >= %(threshold)s THEN %(now)s + %(lockout)s
        WHEN %(now)s - g.first_failure > %(window)s THEN NULL
        ELSE g.locked_until
    END
RETURNING g.*
"""


class PgLoginGuards:
    def __init__(self, db: Db) -> None:
        self._db = db

    async def get(self, user: str) -> LoginGuardRow | None:
        row = await self._db.one("SELECT * FROM login_guard WHERE username = %s", (user,))
        return _guard(row) if row else None

    async def fail(self, user: str, now: float, policy: GuardPolicy) -> LoginGuardRow:
        args = {
            "user": user,
            "now": float(now),
            "window": float(policy.window),
            "threshold": int(policy.threshold),
            "lockout": float(policy.lockout),
        }
        row = await self._db.one(_FAIL, args)
        assert row is not None  # an upsert with RETURNING always returns its row
        return _guard(row)

    async def clear(self, user: str) -> bool:
        row = await self._db.one(
            "DELETE FROM login_guard WHERE username = %s RETURNING username", (user,)
        )
        return row is not None

    async def prune(self, window_start: float, now: float, limit: int) -> int:
        rows = await self._db.all(
            "DELETE FROM login_guard WHERE username IN (SELECT username FROM login_guard"
            " WHERE first_failure < %s AND (locked_until IS NULL OR locked_until <= %s)"
            " LIMIT %s FOR UPDATE SKIP LOCKED) RETURNING username",
            (window_start, now, limit),
        )
        return len(rows)
