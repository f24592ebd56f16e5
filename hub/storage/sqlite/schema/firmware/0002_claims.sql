-- How many times a hub claimed a node's next step (Firmware.claim's compare-and-set).
ALTER TABLE rollout_nodes ADD COLUMN claims INTEGER NOT NULL DEFAULT 0;
