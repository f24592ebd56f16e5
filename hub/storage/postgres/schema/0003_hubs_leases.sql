-- The cluster's hubs (each registers with a lease it renews) and named leases for
-- work one hub does at a time (hub/storage/postgres/hubs.py, hub/singleton.py).
CREATE TABLE hubs (
    id text PRIMARY KEY,
    public_addr text NOT NULL,
    peer_addr text NOT NULL,
    started double precision NOT NULL,
    expires double precision NOT NULL,
    agents integer NOT NULL DEFAULT 0,
    version text NOT NULL DEFAULT '',
    beat_at double precision NOT NULL DEFAULT 0
);
CREATE INDEX hubs_expires ON hubs (expires);
CREATE TABLE leases (
    name text PRIMARY KEY,
    holder text NOT NULL,
    expires double precision NOT NULL,
    acquired double precision NOT NULL
);
