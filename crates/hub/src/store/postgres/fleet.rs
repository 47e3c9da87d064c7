//! PostgreSQL: servers, their latest state, inventory and metrics history.

use std::collections::{HashMap, HashSet};
use std::sync::OnceLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::{PgConnection, Row};

use super::{PgStore, insert_event};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::fleet::metric::Metric;
use crate::store::rows::{
    conflict_if_taken, history_point_from_row, inventory_from_row, ms, server_from_row,
    server_mark_from_row,
};
use crate::store::{
    FleetStore, FleetWrite, HistoryPoint, MetricValues, ReportWrite, ServerMark, ServerRecord, Tier,
};

fn name_taken(e: sqlx::Error) -> Error {
    conflict_if_taken(e, "a server with this name already exists")
}

/// The statements built from [`Metric::ALL`], once.
struct Statements {
    insert_raw: String,
    upsert_minute: String,
    upsert_hour: String,
}

/// The batched statements: each takes one array per column and writes every row of a batch
/// at once. On PostgreSQL each statement is a round trip; one per report and sample was what
/// held ingestion back.
fn statements() -> &'static Statements {
    static STATEMENTS: OnceLock<Statements> = OnceLock::new();
    STATEMENTS.get_or_init(|| {
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        let mut raw_arrays = vec!["$1::BIGINT[]".to_string(), "$2::BIGINT[]".into()];
        for i in 0..names.len() {
            raw_arrays.push(format!("${}::FLOAT8[]", i + 3));
        }
        let insert_raw = format!(
            "INSERT INTO metrics_raw (seq, ts, {}) SELECT * FROM UNNEST({})
             ON CONFLICT DO NOTHING RETURNING seq, ts",
            names.join(", "),
            raw_arrays.join(", ")
        );
        let upsert = |table: &str| {
            let mut columns = vec!["seq".to_string(), "bucket".into(), "last_ts".into()];
            let mut arrays = vec![
                "$1::BIGINT[]".to_string(),
                "$2::BIGINT[]".into(),
                "$3::BIGINT[]".into(),
            ];
            let mut updates = vec![format!(
                "last_ts = GREATEST({table}.last_ts, excluded.last_ts)"
            )];
            for m in &names {
                for (part, ty) in [
                    ("min", "FLOAT8"),
                    ("max", "FLOAT8"),
                    ("sum", "FLOAT8"),
                    ("n", "BIGINT"),
                    ("last", "FLOAT8"),
                ] {
                    columns.push(format!("{m}_{part}"));
                    arrays.push(format!("${}::{ty}[]", arrays.len() + 1));
                }
                // LEAST() and GREATEST() of PostgreSQL skip NULLs.
                updates.push(format!(
                    "{m}_min = LEAST({table}.{m}_min, excluded.{m}_min)"
                ));
                updates.push(format!(
                    "{m}_max = GREATEST({table}.{m}_max, excluded.{m}_max)"
                ));
                updates.push(format!("{m}_sum = {table}.{m}_sum + excluded.{m}_sum"));
                updates.push(format!("{m}_n = {table}.{m}_n + excluded.{m}_n"));
                // Late (backfilled) points do not replace the last value of newer ones.
                updates.push(format!(
                    "{m}_last = CASE WHEN excluded.last_ts >= {table}.last_ts \
                     AND excluded.{m}_last IS NOT NULL \
                     THEN excluded.{m}_last ELSE {table}.{m}_last END"
                ));
            }
            format!(
                "INSERT INTO {table} ({}) SELECT * FROM UNNEST({})
                 ON CONFLICT (seq, bucket) DO UPDATE SET {}",
                columns.join(", "),
                arrays.join(", "),
                updates.join(", ")
            )
        };
        Statements {
            insert_raw,
            upsert_minute: upsert("metrics_1m"),
            upsert_hour: upsert("metrics_1h"),
        }
    })
}

/// One metric's summary within a bucket.
#[derive(Clone, Copy, Default)]
struct Summary {
    min: Option<f64>,
    max: Option<f64>,
    sum: f64,
    n: i64,
    last: Option<(i64, f64)>,
}

/// A bucket's summaries, gathered in memory so a batch writes each bucket once.
#[derive(Clone, Copy)]
struct Bucket {
    last_ts: i64,
    metrics: [Summary; Metric::COUNT],
}

impl Bucket {
    fn add(&mut self, ts: i64, values: &MetricValues) {
        self.last_ts = self.last_ts.max(ts);
        for (summary, value) in self.metrics.iter_mut().zip(values) {
            let Some(v) = *value else { continue };
            summary.min = Some(summary.min.map_or(v, |m| m.min(v)));
            summary.max = Some(summary.max.map_or(v, |m| m.max(v)));
            summary.sum += v;
            summary.n += 1;
            if summary.last.is_none_or(|(at, _)| ts >= at) {
                summary.last = Some((ts, v));
            }
        }
    }
}

type Buckets = HashMap<(i64, i64), Bucket>;

fn add_to(buckets: &mut Buckets, seq: i64, width: i64, ts: i64, values: &MetricValues) {
    buckets
        .entry((seq, ts - ts.rem_euclid(width)))
        .or_insert(Bucket {
            last_ts: ts,
            metrics: [Summary::default(); Metric::COUNT],
        })
        .add(ts, values);
}

async fn upsert_buckets(conn: &mut PgConnection, sql: &str, buckets: &Buckets) -> Result<()> {
    if buckets.is_empty() {
        return Ok(());
    }
    let mut keys: [Vec<i64>; 3] = Default::default();
    let columns = || -> Vec<Vec<Option<f64>>> {
        (0..Metric::COUNT)
            .map(|_| Vec::with_capacity(buckets.len()))
            .collect()
    };
    let (mut mins, mut maxs, mut lasts) = (columns(), columns(), columns());
    let mut sums: Vec<Vec<f64>> = (0..Metric::COUNT)
        .map(|_| Vec::with_capacity(buckets.len()))
        .collect();
    let mut counts: Vec<Vec<i64>> = (0..Metric::COUNT)
        .map(|_| Vec::with_capacity(buckets.len()))
        .collect();
    // In key order, for the same reason as the servers' rows.
    let mut sorted: Vec<_> = buckets.iter().collect();
    sorted.sort_unstable_by_key(|(key, _)| **key);
    for ((seq, bucket), b) in sorted {
        keys[0].push(*seq);
        keys[1].push(*bucket);
        keys[2].push(b.last_ts);
        for (i, s) in b.metrics.iter().enumerate() {
            mins[i].push(s.min);
            maxs[i].push(s.max);
            sums[i].push(s.sum);
            counts[i].push(s.n);
            lasts[i].push(s.last.map(|(_, v)| v));
        }
    }
    let mut q = sqlx::query(sql)
        .bind(&keys[0])
        .bind(&keys[1])
        .bind(&keys[2]);
    for i in 0..Metric::COUNT {
        q = q
            .bind(&mins[i])
            .bind(&maxs[i])
            .bind(&sums[i])
            .bind(&counts[i])
            .bind(&lasts[i]);
    }
    q.execute(&mut *conn).await?;
    Ok(())
}

/// Record each server's latest state from the batch's reports, in one statement; the servers
/// still there (a server deleted while its report waited is skipped).
async fn update_servers(conn: &mut PgConnection, reports: &[&ReportWrite]) -> Result<HashSet<i64>> {
    if reports.is_empty() {
        return Ok(HashSet::new());
    }
    // One row per server (an UPDATE … FROM takes one match per row): the batch is in arrival
    // order, so a later report's agent fields and latest sample win.
    let mut order = Vec::new();
    let mut by_seq: HashMap<i64, (i64, &str, i64, Option<&str>)> = HashMap::new();
    for r in reports {
        let latest = r.latest.as_ref().map(|(_, json)| json.as_str());
        let row = by_seq.entry(r.seq).or_insert_with(|| {
            order.push(r.seq);
            (ms(r.seen_at), "", 0, None)
        });
        row.0 = row.0.max(ms(r.seen_at));
        row.1 = &r.agent_version;
        row.2 = i64::from(r.agent_interval_secs);
        row.3 = latest.or(row.3);
    }
    // In server order: hubs writing the same servers lock their rows in one order, and so
    // queue instead of deadlocking.
    order.sort_unstable();
    let rows: Vec<_> = order.iter().map(|seq| (*seq, by_seq[seq])).collect();
    let known: Vec<i64> = sqlx::query_scalar(
        "UPDATE servers s SET last_seen_at = GREATEST(s.last_seen_at, u.seen),
            agent_version = u.version, agent_interval_secs = u.interval,
            latest_sample = COALESCE(u.latest, s.latest_sample)
         FROM UNNEST($1::BIGINT[], $2::BIGINT[], $3::TEXT[], $4::BIGINT[], $5::TEXT[])
            AS u(seq, seen, version, interval, latest)
         WHERE s.seq = u.seq
         RETURNING s.seq",
    )
    .bind(rows.iter().map(|(seq, _)| *seq).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.0).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.1).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.2).collect::<Vec<_>>())
    .bind(rows.iter().map(|(_, r)| r.3).collect::<Vec<_>>())
    .fetch_all(&mut *conn)
    .await?;
    Ok(known.into_iter().collect())
}

/// Store the samples of the reports of known servers in one statement, and add those newly
/// stored to the rollup buckets. Returns how many were stored: a sample sent twice (its
/// answer was lost) is stored and counted once.
async fn insert_samples(
    conn: &mut PgConnection,
    reports: &[&ReportWrite],
    known: &HashSet<i64>,
    minutes: &mut Buckets,
    hours: &mut Buckets,
) -> Result<u64> {
    let samples: Vec<(i64, i64, &MetricValues)> = reports
        .iter()
        .filter(|r| known.contains(&r.seq))
        .flat_map(|r| r.samples.iter().map(|(ts, v)| (r.seq, ms(*ts), v)))
        .collect();
    if samples.is_empty() {
        return Ok(0);
    }
    let mut q = sqlx::query(&statements().insert_raw)
        .bind(samples.iter().map(|s| s.0).collect::<Vec<_>>())
        .bind(samples.iter().map(|s| s.1).collect::<Vec<_>>());
    for i in 0..Metric::COUNT {
        q = q.bind(samples.iter().map(|s| s.2[i]).collect::<Vec<_>>());
    }
    let mut inserted: HashSet<(i64, i64)> = q
        .fetch_all(&mut *conn)
        .await?
        .iter()
        .map(|row| Ok((row.try_get("seq")?, row.try_get("ts")?)))
        .collect::<Result<_>>()?;
    let mut stored = 0;
    // The first of two copies in one batch is the one stored.
    for (seq, ts, values) in samples {
        if inserted.remove(&(seq, ts)) {
            stored += 1;
            add_to(minutes, seq, Tier::Minute.width_ms(), ts, values);
            add_to(hours, seq, Tier::Hour.width_ms(), ts, values);
        }
    }
    Ok(stored)
}

#[async_trait]
impl FleetStore for PgStore {
    async fn insert_server(&self, s: &ServerRecord, event: &Event) -> Result<i64> {
        let mut tx = self.begin_events().await?;
        let seq = sqlx::query(
            "INSERT INTO servers (id, name, description, tags, token_hash, is_local, interval_secs,
                status, created_by, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING seq",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.description)
        .bind(serde_json::to_string(&s.tags).expect("tags serialise"))
        .bind(&s.token_hash)
        .bind(s.is_local)
        .bind(s.interval_secs.map(i64::from))
        .bind(s.status.as_str())
        .bind(&s.created_by)
        .bind(ms(s.created_at))
        .bind(ms(s.updated_at))
        .fetch_one(&mut *tx)
        .await
        .map_err(name_taken)?
        .try_get("seq")?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(seq)
    }

    async fn list_servers(&self) -> Result<Vec<ServerRecord>> {
        let rows = sqlx::query("SELECT * FROM servers ORDER BY seq")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(server_from_row).collect()
    }

    async fn server_marks(&self) -> Result<Vec<ServerMark>> {
        let rows = sqlx::query("SELECT id, status, last_seen_at, updated_at FROM servers")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(server_mark_from_row).collect()
    }

    async fn servers_with_ids(&self, ids: &[String]) -> Result<Vec<ServerRecord>> {
        let rows = sqlx::query("SELECT * FROM servers WHERE id = ANY($1) ORDER BY seq")
            .bind(ids)
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(server_from_row).collect()
    }

    async fn update_server(&self, s: &ServerRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        let done = sqlx::query(
            "UPDATE servers SET name = $1, description = $2, tags = $3, token_hash = $4,
                interval_secs = $5, updated_at = $6 WHERE seq = $7",
        )
        .bind(&s.name)
        .bind(&s.description)
        .bind(serde_json::to_string(&s.tags).expect("tags serialise"))
        .bind(&s.token_hash)
        .bind(s.interval_secs.map(i64::from))
        .bind(ms(s.updated_at))
        .bind(s.seq)
        .execute(&mut *tx)
        .await
        .map_err(name_taken)?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("server".into()));
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn delete_server(&self, seq: i64, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        // Tasks are keyed by the server's id, so they go while the row still says which.
        sqlx::query("DELETE FROM tasks WHERE server_id = (SELECT id FROM servers WHERE seq = $1)")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM servers WHERE seq = $1")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("server".into()));
        }
        for table in ["inventory", "metrics_raw", "metrics_1m", "metrics_1h"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE seq = $1"))
                .bind(seq)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn write_fleet(&self, writes: &[FleetWrite]) -> Result<u64> {
        let mut minutes = Buckets::new();
        let mut hours = Buckets::new();
        let mut wrote_event = false;
        let mut tx = if writes
            .iter()
            .any(|w| matches!(w, FleetWrite::Status { .. }))
        {
            self.begin_events().await?
        } else {
            self.write.begin().await?
        };
        // Reports and status changes touch different columns, so the batch's reports are
        // written together, whatever their order among status changes.
        let reports: Vec<&ReportWrite> = writes
            .iter()
            .filter_map(|w| match w {
                FleetWrite::Report(r) => Some(r),
                FleetWrite::Status { .. } => None,
            })
            .collect();
        let known = update_servers(&mut tx, &reports).await?;
        let stored = insert_samples(&mut tx, &reports, &known, &mut minutes, &mut hours).await?;
        for r in reports.iter().filter(|r| known.contains(&r.seq)) {
            let Some(inventory) = &r.inventory else {
                continue;
            };
            sqlx::query(
                "INSERT INTO inventory (seq, received_at, changed_at, data) VALUES ($1, $2, $3, $4)
                 ON CONFLICT (seq) DO UPDATE SET received_at = excluded.received_at,
                    changed_at = CASE WHEN inventory.data = excluded.data THEN inventory.changed_at
                        ELSE excluded.changed_at END,
                    data = excluded.data",
            )
            .bind(r.seq)
            .bind(ms(r.seen_at))
            .bind(ms(r.seen_at))
            .bind(inventory)
            .execute(&mut *tx)
            .await?;
        }
        for write in writes {
            if let FleetWrite::Status { seq, status, event } = write {
                let done = sqlx::query("UPDATE servers SET status = $1 WHERE seq = $2")
                    .bind(status.as_str())
                    .bind(seq)
                    .execute(&mut *tx)
                    .await?;
                if done.rows_affected() == 1 {
                    insert_event(&mut tx, event).await?;
                    wrote_event = true;
                }
            }
        }
        let sql = statements();
        upsert_buckets(&mut tx, &sql.upsert_minute, &minutes).await?;
        upsert_buckets(&mut tx, &sql.upsert_hour, &hours).await?;
        tx.commit().await?;
        if wrote_event {
            self.events_committed();
        }
        Ok(stored)
    }

    async fn inventory(&self, seq: i64) -> Result<Option<(DateTime<Utc>, DateTime<Utc>, String)>> {
        let row = sqlx::query("SELECT received_at, changed_at, data FROM inventory WHERE seq = $1")
            .bind(seq)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(inventory_from_row).transpose()
    }

    async fn history(
        &self,
        seq: i64,
        tier: Tier,
        metric: Metric,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<HistoryPoint>> {
        let m = metric.name();
        let (sql, from) = match tier {
            Tier::Raw => (
                format!(
                    "SELECT ts AS t, {m} AS mn, {m} AS mx, {m} AS av, {m} AS la FROM metrics_raw
                     WHERE seq = $1 AND ts BETWEEN $2 AND $3 AND {m} IS NOT NULL ORDER BY ts"
                ),
                ms(from),
            ),
            Tier::Minute | Tier::Hour => {
                let width = tier.width_ms();
                (
                    format!(
                        "SELECT bucket AS t, {m}_min AS mn, {m}_max AS mx, {m}_sum / {m}_n AS av,
                            {m}_last AS la FROM {}
                         WHERE seq = $1 AND bucket BETWEEN $2 AND $3 AND {m}_n > 0 ORDER BY bucket",
                        tier.table()
                    ),
                    ms(from) - ms(from).rem_euclid(width),
                )
            }
        };
        let rows = sqlx::query(&sql)
            .bind(seq)
            .bind(from)
            .bind(ms(to))
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(history_point_from_row).collect()
    }

    async fn prune_history(&self, seqs: &[i64], tier: Tier, before: DateTime<Utc>) -> Result<u64> {
        // Per server, so each delete is a range of the primary key: no index on time needed.
        let sql = format!(
            "DELETE FROM {} WHERE seq = $1 AND {} < $2",
            tier.table(),
            tier.time_column()
        );
        let mut deleted = 0;
        let mut tx = self.write.begin().await?;
        for seq in seqs {
            deleted += sqlx::query(&sql)
                .bind(seq)
                .bind(ms(before))
                .execute(&mut *tx)
                .await?
                .rows_affected();
        }
        tx.commit().await?;
        Ok(deleted)
    }
}
