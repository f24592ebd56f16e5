-- hub.db as hub/backend.py made it before hub/storage (placeholder of part B's branch:
-- sqla's file of the same name is the one kept at merge).
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
