-- Presence replaces nodes.online (kept, no longer written): one lease per node and
-- hub holding its tunnel; a node is online while a lease has not expired.
CREATE TABLE presence (
    node_id TEXT NOT NULL,
    hub_id TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (node_id, hub_id)
);
CREATE INDEX presence_hub ON presence (hub_id);
CREATE INDEX presence_expires ON presence (expires);
