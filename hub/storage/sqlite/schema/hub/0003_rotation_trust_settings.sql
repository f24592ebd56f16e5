-- Part B of hub.db (hub/storage/sqlite/{rotation,trusted,settings}.py): state that
-- lived in JSON and text files before hub/storage. The files are imported once at
-- open (rotation.json, rotation-nodes.json, firmware/trusted.pub, cluster.json).

-- One row: both CA kinds' rotation states (JSON) and the revision a
-- compare-and-set names (0: never written).
CREATE TABLE IF NOT EXISTS rotation (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    states TEXT NOT NULL,
    revision INTEGER NOT NULL
);
INSERT OR IGNORE INTO rotation (id, states, revision) VALUES (1, '{}', 0);
CREATE TABLE IF NOT EXISTS rotation_acks (
    node_id TEXT PRIMARY KEY,
    revision TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS trusted_keys (
    fingerprint TEXT PRIMARY KEY,
    public_key TEXT NOT NULL,
    comment TEXT NOT NULL,
    added REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS settings (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
