-- SSO (hub/storage/sqlite/sso.py): connectors, short-lived SSO state (pending logins,
-- SAML assertion ids already used), and users an SSO connector made. A local user
-- (every row from before) has no connector, no traits and never lapses.
CREATE TABLE connectors (
    name TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    spec TEXT NOT NULL,
    created REAL NOT NULL
);
CREATE TABLE sso_state (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL,
    expires REAL NOT NULL
);
CREATE INDEX sso_state_expires ON sso_state (expires);
ALTER TABLE users ADD COLUMN connector TEXT;
-- The identity provider's claims: a JSON object of lists of strings.
ALTER TABLE users ADD COLUMN traits TEXT NOT NULL DEFAULT '{}';
ALTER TABLE users ADD COLUMN expires REAL;
