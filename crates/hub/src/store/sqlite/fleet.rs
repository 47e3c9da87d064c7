//! SQLite: servers, their latest state, inventory and metrics history.

use std::collections::HashMap;
use std::sync::OnceLock;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::SqliteConnection;

use super::{SqliteStore, insert_event};
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
            "INSERT OR IGNORE INTO metrics_raw (seq, ts, {}) VALUES (?, ?{})",
            names.join(", "),
            ", ?".repeat(names.len())
        );
        let upsert = |table: &str| {
            let mut columns = vec!["seq".to_string(), "bucket".into(), "last_ts".into()];
            let mut updates = vec!["last_ts = max(last_ts, excluded.last_ts)".to_string()];
            for m in &names {
                for part in ["min", "max", "sum", "n", "last"] {
                    columns.push(format!("{m}_{part}"));
                }
                // min() and max() of SQLite give NULL when either side is NULL.
                updates.push(format!(
                    "{m}_min = coalesce(min({m}_min, excluded.{m}_min), {m}_min, excluded.{m}_min)"
                ));
                updates.push(format!(
                    "{m}_max = coalesce(max({m}_max, excluded.{m}_max), {m}_max, excluded.{m}_max)"
                ));
                updates.push(format!("{m}_sum = {m}_sum + excluded.{m}_sum"));
                updates.push(format!("{m}_n = {m}_n + excluded.{m}_n"));
                // Late (backfilled) points do not replace the last value of newer ones.
                updates.push(format!(
                    "{m}_last = CASE WHEN excluded.last_ts >= last_ts AND excluded.{m}_last IS NOT NULL \
                     THEN excluded.{m}_last ELSE {m}_last END"
                ));
            }
            format!(
                "INSERT INTO {table} ({}) VALUES ({}) ON CONFLICT (seq, bucket) DO UPDATE SET {}",
                columns.join(", "),
                vec!["?"; columns.len()].join(", "),
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

async fn upsert_buckets(conn: &mut SqliteConnection, sql: &str, buckets: &Buckets) -> Result<()> {
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
impl FleetStore for SqliteStore {
    async fn insert_server(&self, s: &ServerRecord, event: &Event) -> Result<i64> {
        let mut tx = self.write.begin().await?;
        let seq = sqlx::query(
            "INSERT INTO servers (id, name, description, tags, token_hash, is_local, interval_secs,
                status, created_by, created_at, updated_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&s.id)
        .bind(&s.name)
        .bind(&s.description)
        .bind(serde_json::to_string(&s.tags).expect("tags serialise"))
        .bind(&s.token_hash)
        .bind(s.is_local)
        .bind(s.interval_secs)
        .bind(s.status.as_str())
        .bind(&s.created_by)
        .bind(ms(s.created_at))
        .bind(ms(s.updated_at))
        .execute(&mut *tx)
        .await
        .map_err(name_taken)?
        .last_insert_rowid();
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
        let mut servers = Vec::with_capacity(ids.len());
        // Chunks keep each statement well under SQLite's limit of bound variables.
        for chunk in ids.chunks(500) {
            let mut q = sqlx::QueryBuilder::new("SELECT * FROM servers WHERE id IN (");
            let mut list = q.separated(", ");
            for id in chunk {
                list.push_bind(id);
            }
            q.push(") ORDER BY seq");
            for row in q.build().fetch_all(&self.read).await? {
                servers.push(server_from_row(&row)?);
            }
        }
        Ok(servers)
    }

    async fn update_server(&self, s: &ServerRecord, event: &Event) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let done = sqlx::query(
            "UPDATE servers SET name = ?, description = ?, tags = ?, token_hash = ?,
                interval_secs = ?, updated_at = ? WHERE seq = ?",
        )
        .bind(&s.name)
        .bind(&s.description)
        .bind(serde_json::to_string(&s.tags).expect("tags serialise"))
        .bind(&s.token_hash)
        .bind(s.interval_secs)
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
        let mut tx = self.write.begin().await?;
        // Tasks are keyed by the server's id, so they go while the row still says which.
        sqlx::query("DELETE FROM tasks WHERE server_id = (SELECT id FROM servers WHERE seq = ?)")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        let done = sqlx::query("DELETE FROM servers WHERE seq = ?")
            .bind(seq)
            .execute(&mut *tx)
            .await?;
        if done.rows_affected() == 0 {
            return Err(Error::NotFound("server".into()));
        }
        for table in ["inventory", "metrics_raw", "metrics_1m", "metrics_1h"] {
            sqlx::query(&format!("DELETE FROM {table} WHERE seq = ?"))
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
        let mut tx = self.write.begin().await?;
        for write in writes {
            match write {
                FleetWrite::Report(r) => {
                    let (latest_ts, latest) = match &r.latest {
                        Some((ts, json)) => (Some(ms(*ts)), Some(json.as_str())),
                        None => (None, None),
                    };
                    let known = sqlx::query(
                        "UPDATE servers SET last_seen_at = max(coalesce(last_seen_at, 0), ?),
                            agent_version = ?, agent_interval_secs = ?,
                            latest_sample = CASE WHEN ? IS NOT NULL THEN ? ELSE latest_sample END
                         WHERE seq = ?",
                    )
                    .bind(ms(r.seen_at))
                    .bind(&r.agent_version)
                    .bind(r.agent_interval_secs)
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
                            "INSERT INTO inventory (seq, received_at, changed_at, data) VALUES (?, ?, ?, ?)
                             ON CONFLICT (seq) DO UPDATE SET received_at = excluded.received_at,
                                changed_at = CASE WHEN data = excluded.data THEN changed_at
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
                    let done = sqlx::query("UPDATE servers SET status = ? WHERE seq = ?")
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
        let row = sqlx::query("SELECT received_at, changed_at, data FROM inventory WHERE seq = ?")
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
                     WHERE seq = ? AND ts BETWEEN ? AND ? AND {m} IS NOT NULL ORDER BY ts"
                ),
                ms(from),
            ),
            Tier::Minute | Tier::Hour => {
                let width = tier.width_ms();
                (
                    format!(
                        "SELECT bucket AS t, {m}_min AS mn, {m}_max AS mx, {m}_sum / {m}_n AS av,
                            {m}_last AS la FROM {}
                         WHERE seq = ? AND bucket BETWEEN ? AND ? AND {m}_n > 0 ORDER BY bucket",
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
            "DELETE FROM {} WHERE seq = ? AND {} < ?",
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventType, Origin};
    use crate::store::ReportWrite;

    async fn store_with_server() -> (tempfile::TempDir, SqliteStore, i64) {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("f.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let server = ServerRecord::new("s1".into(), "one".into(), "h".into(), Utc::now());
        let event = Event::new(EventType::ServerCreated, &Origin::default());
        let seq = store.insert_server(&server, &event).await.unwrap();
        (dir, store, seq)
    }

    fn report(seq: i64, points: &[(i64, f64)]) -> FleetWrite {
        let mut values = [None; Metric::COUNT];
        FleetWrite::Report(ReportWrite {
            seq,
            samples: points
                .iter()
                .map(|(secs, cpu)| {
                    values[0] = Some(*cpu);
                    (DateTime::from_timestamp(*secs, 0).unwrap(), values)
                })
                .collect(),
            latest: None,
            seen_at: Utc::now(),
            agent_version: "t".into(),
            agent_interval_secs: 10,
            inventory: None,
        })
    }

    #[tokio::test]
    async fn batches_merge_into_rollups_and_retention_deletes_by_tier() {
        let (_dir, store, seq) = store_with_server().await;
        let hour: i64 = 1_800_000_000; // on the hour
        // Two batches touching the same minute, the second one late and out of order.
        store
            .write_fleet(&[report(seq, &[(hour + 10, 5.0), (hour + 70, 7.0)])])
            .await
            .unwrap();
        store
            .write_fleet(&[report(
                seq,
                &[(hour + 20, 9.0), (hour + 5, 1.0), (hour + 10, 5.0)],
            )])
            .await
            .unwrap();
        let t = |s: i64| DateTime::from_timestamp(s, 0).unwrap();
        let minutes = store
            .history(seq, Tier::Minute, Metric::Cpu, t(hour), t(hour + 3599))
            .await
            .unwrap();
        assert_eq!(minutes.len(), 2);
        let m = minutes[0];
        assert_eq!((m.min, m.max, m.avg, m.last), (1.0, 9.0, 5.0, 9.0));
        let hours = store
            .history(seq, Tier::Hour, Metric::Cpu, t(hour), t(hour + 3599))
            .await
            .unwrap();
        assert_eq!(hours.len(), 1);
        assert_eq!((hours[0].min, hours[0].max, hours[0].last), (1.0, 9.0, 7.0));
        assert_eq!(hours[0].avg, (5.0 + 7.0 + 9.0 + 1.0) / 4.0);
        // A metric nobody reported has no points rather than zeros.
        let temps = store
            .history(
                seq,
                Tier::Hour,
                Metric::Temperature,
                t(hour),
                t(hour + 3599),
            )
            .await
            .unwrap();
        assert!(temps.is_empty());

        let deleted = store
            .prune_history(&[seq], Tier::Raw, t(hour + 60))
            .await
            .unwrap();
        assert_eq!(deleted, 3);
        let raw = store
            .history(seq, Tier::Raw, Metric::Cpu, t(hour), t(hour + 3599))
            .await
            .unwrap();
        assert_eq!(raw.len(), 1);
        assert_eq!(
            store
                .history(seq, Tier::Minute, Metric::Cpu, t(hour), t(hour + 3599))
                .await
                .unwrap()
                .len(),
            2,
            "rollups keep their own retention"
        );
    }

    #[tokio::test]
    async fn reports_of_a_deleted_server_are_skipped_not_failed() {
        let (_dir, store, seq) = store_with_server().await;
        let event = Event::new(EventType::ServerDeleted, &Origin::default());
        store.delete_server(seq, &event).await.unwrap();
        store
            .write_fleet(&[report(seq, &[(1_800_000_000, 5.0)])])
            .await
            .unwrap();
        let (n,): (i64,) = sqlx::query_as("SELECT COUNT(*) FROM metrics_raw")
            .fetch_one(&store.read)
            .await
            .unwrap();
        assert_eq!(n, 0);
    }
}
