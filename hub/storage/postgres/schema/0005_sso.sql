-- SSO (hub/storage/postgres/sso.py): connectors, short-lived SSO state (pending
-- logins, SAML assertion ids already used), and users an SSO connector made. A local
-- user (every row from before) has no connector, no traits and never lapses.
CREATE TABLE connectors (
    name text PRIMARY KEY,
    kind text NOT NULL,
    spec text NOT NULL,
    created double precision NOT NULL
);
CREATE TABLE sso_state (
    key text PRIMARY KEY,
    value text NOT NULL,
    expires double precision NOT NULL
);
CREATE INDEX sso_state_expires ON sso_state (expires);
ALTER TABLE users ADD COLUMN connector text;
-- The identity provider's claims: a JSON object of lists of strings.
ALTER TABLE users ADD COLUMN traits jsonb NOT NULL DEFAULT '{}';
ALTER TABLE users ADD COLUMN expires double precision;
