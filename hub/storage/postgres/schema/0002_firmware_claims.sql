-- How many times a hub claimed a node's next step (Firmware.claim's compare-and-set).
ALTER TABLE rollout_nodes ADD COLUMN claims integer NOT NULL DEFAULT 0;
