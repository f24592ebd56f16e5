-- firmware/firmware.db as hub/firmware_store.py made it before hub/storage: an
-- existing file (user_version 0) passes through unchanged. A file from before
-- --canary-timeout gets its column in hub/storage/sqlite/firmware.py first.
CREATE TABLE IF NOT EXISTS rollouts (
    id TEXT PRIMARY KEY,
    created REAL NOT NULL,
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    bundle TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    size INTEGER NOT NULL,
    selector TEXT NOT NULL,
    canary_percent REAL,
    max_parallel INTEGER NOT NULL,
    rate REAL,
    force INTEGER NOT NULL,
    state TEXT NOT NULL,
    reason TEXT NOT NULL DEFAULT '',
    finished REAL,
    canary_timeout REAL NOT NULL DEFAULT 600
);
CREATE TABLE IF NOT EXISTS rollout_nodes (
    rollout TEXT NOT NULL REFERENCES rollouts(id),
    node_id TEXT NOT NULL,
    node_name TEXT NOT NULL,
    canary INTEGER NOT NULL,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '',
    progress INTEGER NOT NULL DEFAULT 0,
    resumed_from INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    updated REAL NOT NULL,
    PRIMARY KEY (rollout, node_id)
);
