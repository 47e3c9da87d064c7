-- Managed webhooks: the endpoints, the durable delivery queue and the delivery log.
-- Secrets are stored sealed (ChaCha20-Poly1305, "v1:" + base64), never in plain text.

CREATE TABLE webhooks (
    id                         TEXT PRIMARY KEY,
    name                       TEXT NOT NULL,
    url                        TEXT NOT NULL,
    secret                     TEXT,
    previous_secret            TEXT,
    previous_secret_expires_at BIGINT,
    enabled                    BOOLEAN NOT NULL,
    event_types                TEXT,            -- JSON array; NULL means every type
    retry_max                  INTEGER NOT NULL,
    timeout                    INTEGER NOT NULL,
    created_by                 TEXT,
    created_at                 BIGINT NOT NULL,
    updated_at                 BIGINT NOT NULL,
    last_triggered_at          BIGINT,
    failing_since              BIGINT,          -- start of the current run of failures
    disabled_reason            TEXT
);

-- One row per (webhook, event) still to deliver; deleted when delivered or given up.
CREATE TABLE webhook_jobs (
    id              TEXT PRIMARY KEY,
    webhook_id      TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id        TEXT NOT NULL,
    event_type      TEXT NOT NULL,
    payload         TEXT NOT NULL,
    attempt         INTEGER NOT NULL,           -- attempts made so far
    next_attempt_at BIGINT NOT NULL,
    locked_until    BIGINT,                     -- lease of the worker delivering it
    created_at      BIGINT NOT NULL,
    UNIQUE (webhook_id, event_id)
);
CREATE INDEX idx_webhook_jobs_due ON webhook_jobs (next_attempt_at);
CREATE INDEX idx_webhook_jobs_leases ON webhook_jobs (webhook_id, locked_until);

-- Every attempt.
CREATE TABLE webhook_deliveries (
    id            TEXT PRIMARY KEY,
    webhook_id    TEXT NOT NULL REFERENCES webhooks (id) ON DELETE CASCADE,
    event_id      TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('success', 'failed', 'retrying')),
    status_code   INTEGER,
    response_body TEXT,
    error         TEXT,
    attempt       INTEGER NOT NULL,
    delivered_at  BIGINT NOT NULL,
    duration_ms   BIGINT NOT NULL
);
CREATE INDEX idx_webhook_deliveries_webhook ON webhook_deliveries (webhook_id, delivered_at);
CREATE INDEX idx_webhook_deliveries_age ON webhook_deliveries (delivered_at);
