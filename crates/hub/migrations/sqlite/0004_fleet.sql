-- Fleet: servers, their latest state, inventory and metrics history in three tiers.
--
-- Metric tables are keyed by the server's integer `seq` (not its UUID) and clustered by
-- (seq, time): per-server history reads one B-tree range and rows stay small. There is no
-- foreign key: the ingest writer skips reports of a server deleted meanwhile, and deleting a
-- server deletes its history in the same transaction.

CREATE TABLE servers (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL UNIQUE,
    description TEXT,
    tags TEXT NOT NULL DEFAULT '[]',
    token_hash TEXT NOT NULL UNIQUE,
    is_local INTEGER NOT NULL DEFAULT 0,
    interval_secs INTEGER,
    status TEXT NOT NULL DEFAULT 'unknown',
    last_seen_at INTEGER,
    agent_version TEXT,
    agent_interval_secs INTEGER,
    latest_sample TEXT,
    created_by TEXT,
    created_at INTEGER NOT NULL,
    updated_at INTEGER NOT NULL
);

CREATE TABLE inventory (
    seq INTEGER PRIMARY KEY,
    received_at INTEGER NOT NULL,
    changed_at INTEGER NOT NULL,
    data TEXT NOT NULL
);

-- Values: cpu, memory, swap and disk (the fullest filesystem) in percent; load averages;
-- network and disk I/O in bytes/s; temperature as the hottest sensor in degrees Celsius.
CREATE TABLE metrics_raw (
    seq INTEGER NOT NULL,
    ts INTEGER NOT NULL,
    cpu REAL,
    memory REAL,
    swap REAL,
    disk REAL,
    load1 REAL,
    load5 REAL,
    load15 REAL,
    net_rx REAL,
    net_tx REAL,
    disk_read REAL,
    disk_write REAL,
    temperature REAL,
    PRIMARY KEY (seq, ts)
) WITHOUT ROWID;

-- Rollups: min, max, sum and count (avg = sum / n) and the last value of each metric.
CREATE TABLE metrics_1m (
    seq INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    cpu_min REAL, cpu_max REAL, cpu_sum REAL NOT NULL DEFAULT 0, cpu_n INTEGER NOT NULL DEFAULT 0, cpu_last REAL,
    memory_min REAL, memory_max REAL, memory_sum REAL NOT NULL DEFAULT 0, memory_n INTEGER NOT NULL DEFAULT 0, memory_last REAL,
    swap_min REAL, swap_max REAL, swap_sum REAL NOT NULL DEFAULT 0, swap_n INTEGER NOT NULL DEFAULT 0, swap_last REAL,
    disk_min REAL, disk_max REAL, disk_sum REAL NOT NULL DEFAULT 0, disk_n INTEGER NOT NULL DEFAULT 0, disk_last REAL,
    load1_min REAL, load1_max REAL, load1_sum REAL NOT NULL DEFAULT 0, load1_n INTEGER NOT NULL DEFAULT 0, load1_last REAL,
    load5_min REAL, load5_max REAL, load5_sum REAL NOT NULL DEFAULT 0, load5_n INTEGER NOT NULL DEFAULT 0, load5_last REAL,
    load15_min REAL, load15_max REAL, load15_sum REAL NOT NULL DEFAULT 0, load15_n INTEGER NOT NULL DEFAULT 0, load15_last REAL,
    net_rx_min REAL, net_rx_max REAL, net_rx_sum REAL NOT NULL DEFAULT 0, net_rx_n INTEGER NOT NULL DEFAULT 0, net_rx_last REAL,
    net_tx_min REAL, net_tx_max REAL, net_tx_sum REAL NOT NULL DEFAULT 0, net_tx_n INTEGER NOT NULL DEFAULT 0, net_tx_last REAL,
    disk_read_min REAL, disk_read_max REAL, disk_read_sum REAL NOT NULL DEFAULT 0, disk_read_n INTEGER NOT NULL DEFAULT 0, disk_read_last REAL,
    disk_write_min REAL, disk_write_max REAL, disk_write_sum REAL NOT NULL DEFAULT 0, disk_write_n INTEGER NOT NULL DEFAULT 0, disk_write_last REAL,
    temperature_min REAL, temperature_max REAL, temperature_sum REAL NOT NULL DEFAULT 0, temperature_n INTEGER NOT NULL DEFAULT 0, temperature_last REAL,
    PRIMARY KEY (seq, bucket)
) WITHOUT ROWID;

CREATE TABLE metrics_1h (
    seq INTEGER NOT NULL,
    bucket INTEGER NOT NULL,
    last_ts INTEGER NOT NULL,
    cpu_min REAL, cpu_max REAL, cpu_sum REAL NOT NULL DEFAULT 0, cpu_n INTEGER NOT NULL DEFAULT 0, cpu_last REAL,
    memory_min REAL, memory_max REAL, memory_sum REAL NOT NULL DEFAULT 0, memory_n INTEGER NOT NULL DEFAULT 0, memory_last REAL,
    swap_min REAL, swap_max REAL, swap_sum REAL NOT NULL DEFAULT 0, swap_n INTEGER NOT NULL DEFAULT 0, swap_last REAL,
    disk_min REAL, disk_max REAL, disk_sum REAL NOT NULL DEFAULT 0, disk_n INTEGER NOT NULL DEFAULT 0, disk_last REAL,
    load1_min REAL, load1_max REAL, load1_sum REAL NOT NULL DEFAULT 0, load1_n INTEGER NOT NULL DEFAULT 0, load1_last REAL,
    load5_min REAL, load5_max REAL, load5_sum REAL NOT NULL DEFAULT 0, load5_n INTEGER NOT NULL DEFAULT 0, load5_last REAL,
    load15_min REAL, load15_max REAL, load15_sum REAL NOT NULL DEFAULT 0, load15_n INTEGER NOT NULL DEFAULT 0, load15_last REAL,
    net_rx_min REAL, net_rx_max REAL, net_rx_sum REAL NOT NULL DEFAULT 0, net_rx_n INTEGER NOT NULL DEFAULT 0, net_rx_last REAL,
    net_tx_min REAL, net_tx_max REAL, net_tx_sum REAL NOT NULL DEFAULT 0, net_tx_n INTEGER NOT NULL DEFAULT 0, net_tx_last REAL,
    disk_read_min REAL, disk_read_max REAL, disk_read_sum REAL NOT NULL DEFAULT 0, disk_read_n INTEGER NOT NULL DEFAULT 0, disk_read_last REAL,
    disk_write_min REAL, disk_write_max REAL, disk_write_sum REAL NOT NULL DEFAULT 0, disk_write_n INTEGER NOT NULL DEFAULT 0, disk_write_last REAL,
    temperature_min REAL, temperature_max REAL, temperature_sum REAL NOT NULL DEFAULT 0, temperature_n INTEGER NOT NULL DEFAULT 0, temperature_last REAL,
    PRIMARY KEY (seq, bucket)
) WITHOUT ROWID;
