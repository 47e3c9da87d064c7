-- Foundation: users, login sessions and personal tokens, the event log.
-- Timestamps are UTC Unix milliseconds (BIGINT) so that the same SQL sorts and compares them on
-- every backend; ids are UUID v7 text.

CREATE TABLE users (
    id            TEXT PRIMARY KEY,
    username      TEXT NOT NULL UNIQUE,
    email         TEXT,
    role          TEXT NOT NULL CHECK (role IN ('admin', 'operator', 'viewer', 'auditor')),
    enabled       BOOLEAN NOT NULL DEFAULT TRUE,
    password_hash TEXT NOT NULL,
    created_at    BIGINT NOT NULL,
    updated_at    BIGINT NOT NULL,
    last_login_at BIGINT
);

-- Login sessions and personal API tokens; only the SHA-256 of a token is kept.
CREATE TABLE auth_tokens (
    id           TEXT PRIMARY KEY,
    user_id      TEXT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    kind         TEXT NOT NULL CHECK (kind IN ('session', 'personal')),
    name         TEXT,
    token_hash   TEXT NOT NULL UNIQUE,
    created_at   BIGINT NOT NULL,
    last_used_at BIGINT NOT NULL,
    expires_at   BIGINT
);
CREATE INDEX idx_auth_tokens_user ON auth_tokens (user_id, kind);
CREATE INDEX idx_auth_tokens_last_used ON auth_tokens (kind, last_used_at);
CREATE INDEX idx_auth_tokens_expires ON auth_tokens (expires_at);

-- The event log: audit trail and (later) outbox. seq gives the total order.
CREATE TABLE events (
    seq         INTEGER PRIMARY KEY AUTOINCREMENT,
    event_id    TEXT NOT NULL UNIQUE,
    event_type  TEXT NOT NULL,
    ts          BIGINT NOT NULL,
    user_id     TEXT,
    username    TEXT,
    server_id   TEXT,
    server_name TEXT,
    target_type TEXT,
    target_id   TEXT,
    action      TEXT NOT NULL,
    meta        TEXT NOT NULL,
    ip          TEXT,
    user_agent  TEXT,
    severity    TEXT NOT NULL
);
CREATE INDEX idx_events_ts ON events (ts);
CREATE INDEX idx_events_type ON events (event_type, seq);
CREATE INDEX idx_events_user ON events (user_id, seq);
CREATE INDEX idx_events_target ON events (target_type, target_id, seq);

-- One row rewritten by the readiness check to prove the database accepts writes.
CREATE TABLE health_probe (
    id         INTEGER PRIMARY KEY,
    checked_at BIGINT NOT NULL
);
