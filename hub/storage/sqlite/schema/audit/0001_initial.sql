-- audit.db as hub/audit_store.py made it before hub/storage: an existing file
-- (user_version 0) passes through unchanged (IF NOT EXISTS everywhere).
CREATE TABLE IF NOT EXISTS events (
    node TEXT NOT NULL,
    id TEXT NOT NULL,
    type TEXT NOT NULL,
    time REAL NOT NULL,
    user TEXT NOT NULL,
    login TEXT NOT NULL,
    session_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    fields BLOB NOT NULL,
    PRIMARY KEY (node, id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS events_time ON events (time, seq, id, node);
CREATE INDEX IF NOT EXISTS events_session ON events (session_id, seq) WHERE session_id != '';
CREATE INDEX IF NOT EXISTS events_user ON events (user, time);
CREATE INDEX IF NOT EXISTS events_type ON events (type, time);
CREATE INDEX IF NOT EXISTS events_node_seq ON events (node, seq);
