-- Remote tasks: a shell command for one server, its state, bounded output and exit code.

CREATE TABLE tasks (
    id TEXT PRIMARY KEY,
    server_id TEXT NOT NULL,
    command TEXT NOT NULL,
    timeout_secs INTEGER NOT NULL,
    store_output INTEGER NOT NULL,
    -- queued, running, finished, failed, timeout, cancelled, interrupted
    status TEXT NOT NULL,
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    cancelled_by TEXT,
    created_by TEXT,
    created_by_name TEXT,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    exit_code INTEGER,
    stdout TEXT,
    stderr TEXT,
    output_truncated INTEGER NOT NULL DEFAULT 0,
    error TEXT
);

-- What agents are handed and what the reconciler watches: only unfinished tasks.
CREATE INDEX tasks_open ON tasks (server_id, status) WHERE status IN ('queued', 'running');
CREATE INDEX tasks_by_server ON tasks (server_id, created_at);
CREATE INDEX tasks_by_creator ON tasks (created_by, created_at);
CREATE INDEX tasks_by_time ON tasks (created_at);
CREATE INDEX tasks_by_status ON tasks (status, created_at);
