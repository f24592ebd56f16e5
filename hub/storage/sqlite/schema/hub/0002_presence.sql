-- Placeholder of part B's branch: sqla's file of the same name is the one kept at merge.
CREATE TABLE IF NOT EXISTS presence (
    node_id TEXT NOT NULL,
    hub_id TEXT NOT NULL,
    expires REAL NOT NULL,
    PRIMARY KEY (node_id, hub_id)
);
