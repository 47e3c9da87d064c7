-- Threshold alerts: rules, and the alerts they raised (firing, then resolved).

CREATE TABLE alert_rules (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- cpu, memory, swap, disk, load, net_rx, net_tx, temperature or offline
    metric TEXT NOT NULL,
    -- disk only: one mount point; NULL means the fullest filesystem
    mount TEXT,
    -- >, >=, < or <=
    comparison TEXT NOT NULL,
    threshold REAL NOT NULL,
    -- where a firing alert resolves; NULL means the threshold itself
    recovery_threshold REAL,
    for_secs INTEGER NOT NULL,
    severity TEXT NOT NULL,
    -- all, tag or server, with the tag or the server id in scope_value
    scope TEXT NOT NULL,
    scope_value TEXT,
    enabled INTEGER NOT NULL,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE alerts (
    id TEXT PRIMARY KEY,
    rule_id TEXT NOT NULL,
    rule_name TEXT NOT NULL,
    server_id TEXT NOT NULL,
    server_name TEXT,
    metric TEXT NOT NULL,
    severity TEXT NOT NULL,
    -- firing or resolved
    status TEXT NOT NULL,
    value REAL,
    threshold REAL NOT NULL,
    pending_since INTEGER NOT NULL,
    fired_at INTEGER NOT NULL,
    resolved_at INTEGER,
    resolved_value REAL,
    resolution TEXT,
    acknowledged_by TEXT,
    acknowledged_at INTEGER
);

-- At most one firing alert per rule and server, whatever happens to the process.
CREATE UNIQUE INDEX alerts_one_firing ON alerts (rule_id, server_id) WHERE status = 'firing';
CREATE INDEX alerts_by_time ON alerts (fired_at);
CREATE INDEX alerts_by_status ON alerts (status, fired_at);
CREATE INDEX alerts_by_server ON alerts (server_id, fired_at);
CREATE INDEX alerts_by_rule ON alerts (rule_id, fired_at);

-- The defaults every fleet wants, editable and removable like any rule. Their recovery
-- thresholds sit below the trigger so that a value hovering at 90 % does not flap.
INSERT INTO alert_rules (id, name, metric, mount, comparison, threshold, recovery_threshold,
    for_secs, severity, scope, scope_value, enabled, created_by, created_at, updated_at)
VALUES
    ('0193a000-0000-7000-8000-000000000001', 'CPU above 90 % for 5 minutes', 'cpu', NULL, '>', 90,
        80, 300, 'warning', 'all', NULL, 1, NULL, unixepoch() * 1000, unixepoch() * 1000),
    ('0193a000-0000-7000-8000-000000000002', 'Memory above 90 %', 'memory', NULL, '>', 90,
        85, 60, 'warning', 'all', NULL, 1, NULL, unixepoch() * 1000, unixepoch() * 1000),
    ('0193a000-0000-7000-8000-000000000003', 'Disk above 90 %', 'disk', NULL, '>', 90,
        85, 0, 'error', 'all', NULL, 1, NULL, unixepoch() * 1000, unixepoch() * 1000),
    ('0193a000-0000-7000-8000-000000000004', 'Server offline', 'offline', NULL, '>', 0,
        NULL, 0, 'critical', 'all', NULL, 1, NULL, unixepoch() * 1000, unixepoch() * 1000);
