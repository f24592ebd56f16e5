-- The cluster's hubs (each registers with a lease it renews) and named leases for
-- work one hub does at a time (hub/storage/sqlite/hubs.py, hub/singleton.py).
CREATE TABLE hubs (
    id TEXT PRIMARY KEY,
    public_addr TEXT NOT NULL,
    peer_addr TEXT NOT NULL,
    started REAL NOT NULL,
    expires REAL NOT NULL,
    agents INTEGER NOT NULL DEFAULT 0,
    version TEXT NOT NULL DEFAULT '',
    beat_at REAL NOT NULL DEFAULT 0
);
CREATE INDEX hubs_expires ON hubs (expires);
CREATE TABLE leases (
    name TEXT PRIMARY KEY,
    holder TEXT NOT NULL,
    expires REAL NOT NULL,
    acquired REAL NOT NULL
);
