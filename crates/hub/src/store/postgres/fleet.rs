//! PostgreSQL: servers, their latest state, inventory and metrics history.

use std::collections::HashMap;
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
    FleetStore, FleetWrite, HistoryPoint, MetricValues, ServerMark, ServerRecord, Tier,
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

fn statements() -> &'static Statements {
    static STATEMENTS: OnceLock<Statements> = OnceLock::new();
    STATEMENTS.get_or_init(|| {
        let names: Vec<&str> = Metric::ALL.iter().map(|m| m.name()).collect();
        let insert_raw = format!(
            "INSERT INTO metrics_raw (seq, ts, {}) VALUES ({}) ON CONFLICT DO NOTHING",
            names.join(", "),
            placeholders(names.len() + 2)
        );
        let upsert = |table: &str| {
            let mut columns = vec!["seq".to_string(), "bucket".into(), "last_ts".into()];
            let mut updates = vec![format!(
                "last_ts = GREATEST({table}.last_ts, excluded.last_ts)"
            )];
            for m in &names {
                for part in ["min", "max", "sum", "n", "last"] {
                    columns.push(format!("{m}_{part}"));
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
                "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT (seq, bucket) DO UPDATE SET {}",
                columns.join(", "),
                placeholders(columns.len()),
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

/// `$1, $2, …, $n`.
fn placeholders(n: usize) -> String {
    (1..=n)
        .map(|i| format!("${i}"))
        .collect::<Vec<_>>()
        .join(", ")
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
    for ((seq, bucket), b) in buckets {
        let mut q = sqlx::query(sql).bind(seq).bind(bucket).bind(b.last_ts);
        for s in &b.metrics {
            q = q
                .bind(s.min)
                .bind(s.max)
                .bind(s.sum)
                .bind(s.n)
                .bind(s.last.map(|(_, v)| v));
        }
        q.execute(&mut *conn).await?;
    }
    Ok(())
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
        let mut stored = 0;
        let sql = statements();
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
        for write in writes {
            match write {
                FleetWrite::Report(r) => {
                    let (latest_ts, latest) = match &r.latest {
                        Some((ts, json)) => (Some(ms(*ts)), Some(json.as_str())),
                        None => (None, None),
                    };
                    let known = sqlx::query(
                        "UPDATE servers SET last_seen_at = GREATEST(last_seen_at, $1),
                            agent_version = $2, agent_interval_secs = $3,
                            latest_sample = CASE WHEN $4 IS NOT NULL THEN $5 ELSE latest_sample END
                         WHERE seq = $6",
                    )
                    .bind(ms(r.seen_at))
                    .bind(&r.agent_version)
                    .bind(i64::from(r.agent_interval_secs))
                    .bind(latest_ts)
                    .bind(latest)
                    .bind(r.seq)
                    .execute(&mut *tx)
                    .await?;
                    if known.rows_affected() == 0 {
                        continue; // deleted while its report waited
                    }
                    for (ts, values) in &r.samples {
                        let ts = ms(*ts);
                        let mut q = sqlx::query(&sql.insert_raw).bind(r.seq).bind(ts);
                        for v in values {
                            q = q.bind(*v);
                        }
                        // A sample sent twice (its answer was lost) is stored and counted once.
                        if q.execute(&mut *tx).await?.rows_affected() == 1 {
                            stored += 1;
                            add_to(&mut minutes, r.seq, Tier::Minute.width_ms(), ts, values);
                            add_to(&mut hours, r.seq, Tier::Hour.width_ms(), ts, values);
                        }
                    }
                    if let Some(inventory) = &r.inventory {
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
                }
                FleetWrite::Status { seq, status, event } => {
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
        }
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
