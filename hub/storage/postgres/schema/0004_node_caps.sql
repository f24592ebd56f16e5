-- What each node's agent supports (remoteler/caps.py), from its last heartbeat:
-- a JSON list of names, '[]' for an agent older than capabilities.
ALTER TABLE nodes ADD COLUMN caps jsonb NOT NULL DEFAULT '[]';
