-- The hub's state on PostgreSQL (hub/storage/api.py). Times are Unix seconds
-- (double precision) passed in by the hubs; label maps and states are jsonb.
CREATE TABLE schema_version (
    version integer PRIMARY KEY,
    applied timestamptz NOT NULL
);

CREATE TABLE users (
    name text PRIMARY KEY,
    roles jsonb NOT NULL,
    logins jsonb NOT NULL,
    password_hash text,
    totp_secret text,
    totp_last_step bigint NOT NULL DEFAULT 0,
    created double precision NOT NULL
);
CREATE TABLE roles (name text PRIMARY KEY, spec jsonb NOT NULL);
CREATE TABLE tokens (
    token_hash text PRIMARY KEY,
    kind text NOT NULL,
    labels jsonb NOT NULL,
    created double precision NOT NULL,
    expires double precision NOT NULL,
    used_by text
);
CREATE INDEX tokens_id ON tokens (substr(token_hash, 1, 12));
CREATE TABLE invites (
    token_hash text PRIMARY KEY,
    username text NOT NULL,
    expires double precision NOT NULL
);
CREATE TABLE login_guard (
    username text PRIMARY KEY,
    failures integer NOT NULL,
    first_failure double precision NOT NULL,
    locked_until double precision
);

CREATE TABLE nodes (
    id text PRIMARY KEY,
    name text UNIQUE NOT NULL,
    labels jsonb NOT NULL,
    version text NOT NULL DEFAULT '',
    last_seen double precision,
    joined double precision NOT NULL,
    token_labels jsonb NOT NULL DEFAULT '{}',
    audit_pending bigint NOT NULL DEFAULT 0,
    audit_oldest double precision,
    recording text NOT NULL DEFAULT 'off',
    clock_skew double precision
);
CREATE TABLE presence (
    node_id text NOT NULL,
    hub_id text NOT NULL,
    expires double precision NOT NULL,
    PRIMARY KEY (node_id, hub_id)
);
CREATE INDEX presence_hub ON presence (hub_id);
CREATE INDEX presence_expires ON presence (expires);
CREATE TABLE locks (
    id text PRIMARY KEY,
    kind text NOT NULL,
    target text NOT NULL,
    message text NOT NULL DEFAULT '',
    created double precision NOT NULL,
    expires double precision,
    created_by text NOT NULL DEFAULT ''
);

CREATE TABLE events (
    node text NOT NULL,
    id text NOT NULL,
    type text NOT NULL,
    time double precision NOT NULL,
    username text NOT NULL,
    login text NOT NULL,
    session_id text NOT NULL,
    seq bigint NOT NULL,
    fields bytea NOT NULL,
    PRIMARY KEY (node, id)
);
CREATE INDEX events_time ON events (time, seq, id, node);
CREATE INDEX events_session ON events (session_id, seq) WHERE session_id <> '';
CREATE INDEX events_session_prefix ON events (session_id text_pattern_ops) WHERE session_id <> '';
CREATE INDEX events_user ON events (username, time);
CREATE INDEX events_type ON events (type, time);
CREATE INDEX events_node_seq ON events (node, seq);

CREATE TABLE authorities (
    kind text NOT NULL CHECK (kind IN ('user', 'host')),
    slot text NOT NULL CHECK (slot IN ('current', 'next')),
    private_key bytea NOT NULL,
    ssh_public text NOT NULL,
    x509_pem bytea NOT NULL,
    PRIMARY KEY (kind, slot)
);
CREATE TABLE rotation (
    one boolean PRIMARY KEY DEFAULT true CHECK (one),
    states jsonb NOT NULL,
    revision bigint NOT NULL
);
CREATE TABLE rotation_acks (node_id text PRIMARY KEY, revision text NOT NULL);
CREATE TABLE settings (key text PRIMARY KEY, value text NOT NULL);

CREATE TABLE rollouts (
    id text PRIMARY KEY,
    created double precision NOT NULL,
    name text NOT NULL,
    version text NOT NULL,
    bundle text NOT NULL,
    sha256 text NOT NULL,
    size bigint NOT NULL,
    selector jsonb NOT NULL,
    canary_percent double precision,
    max_parallel integer NOT NULL,
    rate double precision,
    force boolean NOT NULL,
    state text NOT NULL,
    reason text NOT NULL DEFAULT '',
    finished double precision,
    canary_timeout double precision NOT NULL DEFAULT 600
);
CREATE INDEX rollouts_state ON rollouts (state, created);
CREATE TABLE rollout_nodes (
    rollout text NOT NULL REFERENCES rollouts (id) ON DELETE CASCADE,
    node_id text NOT NULL,
    node_name text NOT NULL,
    canary boolean NOT NULL,
    state text NOT NULL,
    detail text NOT NULL DEFAULT '',
    progress bigint NOT NULL DEFAULT 0,
    resumed_from bigint NOT NULL DEFAULT 0,
    attempts integer NOT NULL DEFAULT 0,
    updated double precision NOT NULL,
    PRIMARY KEY (rollout, node_id)
);
CREATE TABLE trusted_keys (
    fingerprint text PRIMARY KEY,
    public_key text NOT NULL,
    comment text NOT NULL DEFAULT '',
    added double precision NOT NULL
);

-- Blobs: a row per blob once it is complete, its bytes in 1 MiB chunks.
CREATE TABLE blobs (name text PRIMARY KEY, size bigint NOT NULL);
CREATE TABLE blob_chunks (
    name text NOT NULL,
    n integer NOT NULL,
    data bytea NOT NULL,
    PRIMARY KEY (name, n)
);
