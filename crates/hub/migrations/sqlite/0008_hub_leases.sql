-- Leases held by one hub at a time (the leader's background work), renewed while it lives.
-- One SQLite hub always holds them; the table exists so both backends share the code.
CREATE TABLE hub_leases (
    name       TEXT PRIMARY KEY,
    holder     TEXT NOT NULL,
    expires_at BIGINT NOT NULL
);
