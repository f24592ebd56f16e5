"""``PostgresStorage``: the sections over one pool, the LISTEN change feed, check and close."""

from __future__ import annotations

from collections.abc import AsyncIterator

from hub.storage.api import (
    AuditLog,
    Authorities,
    Blobs,
    Change,
    Connectors,
    Firmware,
    Hubs,
    Invites,
    Leases,
    Locks,
    LoginGuards,
    Nodes,
    PresenceTable,
    Roles,
    Rotation,
    Settings,
    SSOStates,
    StorageError,
    Tokens,
    TrustedKeys,
    Users,
)
from hub.storage.feed import ChangeFeed
from hub.storage.postgres import migrate
from hub.storage.postgres.audit import PgAudit
from hub.storage.postgres.cluster import PgAuthorities, PgRotation, PgSettings
from hub.storage.postgres.db import Db
from hub.storage.postgres.firmware import PgBlobs, PgFirmware, PgTrustedKeys
from hub.storage.postgres.hubs import PgHubs, PgLeases
from hub.storage.postgres.identity import PgInvites, PgLoginGuards, PgRoles, PgTokens, PgUsers
from hub.storage.postgres.listen import Listener
from hub.storage.postgres.nodes import PgLocks, PgNodes, PgPresence
from hub.storage.postgres.sso import PgConnectors, PgSSOStates


class PostgresStorage:
    engine = "postgresql"

    def __init__(self, db: Db, feed: ChangeFeed, listener: Listener) -> None:
        self.db = db
        self.feed = feed
        self.listener = listener
        self.users: Users = PgUsers(db)
        self.roles: Roles = PgRoles(db)
        self.tokens: Tokens = PgTokens(db)
        self.invites: Invites = PgInvites(db)
        self.nodes: Nodes = PgNodes(db)
        self.presence: PresenceTable = PgPresence(db)
        self.locks: Locks = PgLocks(db)
        self.login_guards: LoginGuards = PgLoginGuards(db)
        self.audit: AuditLog = PgAudit(db)
        self.authorities: Authorities = PgAuthorities(db)
        self.rotation: Rotation = PgRotation(db)
        self.settings: Settings = PgSettings(db)
        self.firmware: Firmware = PgFirmware(db)
        self.trusted_keys: TrustedKeys = PgTrustedKeys(db)
        self.blobs: Blobs = PgBlobs(db)
        self.hubs: Hubs = PgHubs(db)
        self.leases: Leases = PgLeases(db)
        self.connectors: Connectors = PgConnectors(db)
        self.sso: SSOStates = PgSSOStates(db)

    def changes(self) -> AsyncIterator[Change]:
        return self.feed.subscribe()

    async def check(self) -> None:
        async with self.db.tx() as conn:
            have = await migrate.schema_version(conn)
        if have > migrate.newest():
            raise migrate.too_new(have, self.db.where)
        if have < migrate.newest():
            raise StorageError(
                f"PostgreSQL at {self.db.where} is at schema version {have}, older than "
                f"{migrate.newest()}: restart the hub to migrate it"
            )

    async def close(self) -> None:
        await self.listener.close()
        self.feed.close()
        await self.db.pool.close()
