//! SQLite backend: WAL mode, one writer connection, a small pool of readers.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{QueryBuilder, Row, Sqlite, SqliteConnection};
use tokio::sync::Notify;

use super::rows::{event_from_row, is_unique_violation, ms, token_from_row, user_from_row};
use super::{
    EventStore, QueueDepths, Store, TokenKind, TokenRecord, TokenStore, UserRecord, UserStore,
};
use crate::error::{Error, Result};
use crate::events::{Event, EventFilter};

mod alerts;
mod fleet;
mod tasks;
mod webhooks;

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/sqlite");

/// The SQLite store. Writes go through one connection so they never contend for the lock.
#[derive(Clone)]
pub struct SqliteStore {
    read: SqlitePool,
    write: SqlitePool,
    new_events: Arc<Notify>,
    new_jobs: Arc<Notify>,
    /// Bumped after every commit that wrote an event (caches of event reads key on it).
    event_commits: Arc<std::sync::atomic::AtomicU64>,
    /// Delivery attempts to record, batched by [`webhooks::run_finisher`].
    finishes: tokio::sync::mpsc::UnboundedSender<webhooks::Finish>,
}

impl SqliteStore {
    /// Open (creating if needed) the database at `url` and apply pending migrations.
    pub async fn open(url: &str) -> Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("invalid SQLite URL {url:?}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .foreign_keys(true)
            .busy_timeout(Duration::from_secs(5));
        if let Some(parent) = options
            .get_filename()
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
        {
            create_private_dir(parent)?;
        }
        let write = SqlitePoolOptions::new()
            .max_connections(1)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.clone())
            .await
            .with_context(|| {
                format!("cannot open database {}", options.get_filename().display())
            })?;
        MIGRATOR.run(&write).await?;
        let read = SqlitePoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options.read_only(true))
            .await
            .context("cannot open read connections")?;
        let (finishes, requests) = tokio::sync::mpsc::unbounded_channel();
        let store = Self {
            read,
            write,
            new_events: Arc::new(Notify::new()),
            new_jobs: Arc::new(Notify::new()),
            event_commits: Arc::default(),
            finishes,
        };
        // The finisher holds a store without a sender of its own, so it ends when the last
        // handle of this store is dropped.
        let (closed, _) = tokio::sync::mpsc::unbounded_channel();
        let finisher = Self {
            finishes: closed,
            ..store.clone()
        };
        tokio::spawn(webhooks::run_finisher(finisher, requests));
        Ok(store)
    }
}

/// Create the database's directory, owner-only since it holds password hashes and the audit
/// trail. An existing directory is left as the operator set it up.
fn create_private_dir(dir: &Path) -> Result<()> {
    if dir.exists() {
        return Ok(());
    }
    std::fs::create_dir_all(dir)
        .with_context(|| format!("cannot create data directory {}", dir.display()))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
            .with_context(|| format!("cannot restrict {} to its owner", dir.display()))?;
    }
    Ok(())
}

impl SqliteStore {
    /// The read-only connections, for the data migration.
    pub(crate) fn read_pool(&self) -> &SqlitePool {
        &self.read
    }

    /// After a commit that wrote events: wake the dispatcher, and let caches of event reads
    /// know.
    fn events_committed(&self) {
        self.event_commits
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.new_events.notify_one();
    }
}

async fn insert_event(conn: &mut SqliteConnection, e: &Event) -> Result<()> {
    sqlx::query(
        "INSERT INTO events (event_id, event_type, ts, user_id, username, server_id, server_name,
            target_type, target_id, action, meta, ip, user_agent, severity)
         VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
    )
    .bind(e.event_id.to_string())
    .bind(&e.event_type)
    .bind(ms(e.timestamp))
    .bind(&e.user_id)
    .bind(&e.username)
    .bind(&e.server_id)
    .bind(&e.server_name)
    .bind(&e.target_type)
    .bind(&e.target_id)
    .bind(&e.action)
    .bind(serde_json::Value::Object(e.meta.clone()).to_string())
    .bind(&e.ip)
    .bind(&e.user_agent)
    .bind(e.severity.as_str())
    .execute(conn)
    .await?;
    Ok(())
}

async fn enabled_admins(conn: &mut SqliteConnection) -> Result<i64> {
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND enabled")
        .fetch_one(conn)
        .await?;
    Ok(n)
}

/// Refuse a change that took away the last enabled admin (called inside the change's
/// transaction, after the change, with the count from before it). A database that never had
/// an admin (users made with the CLI before the first start) is not blocked.
async fn ensure_an_admin_remains(conn: &mut SqliteConnection, before: i64) -> Result<()> {
    if before > 0 && enabled_admins(conn).await? == 0 {
        return Err(Error::Conflict(
            "the last enabled admin cannot be deleted, demoted or disabled".into(),
        ));
    }
    Ok(())
}

fn username_taken(username: &str) -> Error {
    Error::Conflict(format!("username {username:?} is already taken"))
}

#[async_trait]
impl UserStore for SqliteStore {
    async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.read)
            .await?;
        Ok(n as u64)
    }

    async fn insert_user(&self, u: &UserRecord, event: &Event) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, email, role, enabled, password_hash, created_at,
                updated_at, last_login_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&u.id)
        .bind(&u.username)
        .bind(&u.email)
        .bind(u.role.as_str())
        .bind(u.enabled)
        .bind(&u.password_hash)
        .bind(ms(u.created_at))
        .bind(ms(u.updated_at))
        .bind(u.last_login_at.map(ms))
        .execute(&mut *tx)
        .await;
        match inserted {
            Err(e) if is_unique_violation(&e) => return Err(username_taken(&u.username)),
            other => other?,
        };
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = ?")
            .bind(username)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn list_users(&self) -> Result<Vec<UserRecord>> {
        let rows = sqlx::query("SELECT * FROM users ORDER BY username")
            .fetch_all(&self.read)
            .await?;
        rows.iter().map(user_from_row).collect()
    }

    async fn update_user(
        &self,
        u: &UserRecord,
        revoke_sessions: bool,
        event: &Event,
    ) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let admins_before = enabled_admins(&mut tx).await?;
        let updated = sqlx::query(
            "UPDATE users SET username = ?, email = ?, role = ?, enabled = ?, password_hash = ?,
                updated_at = ? WHERE id = ?",
        )
        .bind(&u.username)
        .bind(&u.email)
        .bind(u.role.as_str())
        .bind(u.enabled)
        .bind(&u.password_hash)
        .bind(ms(u.updated_at))
        .bind(&u.id)
        .execute(&mut *tx)
        .await;
        let updated = match updated {
            Err(e) if is_unique_violation(&e) => return Err(username_taken(&u.username)),
            other => other?,
        };
        if updated.rows_affected() == 0 {
            return Err(Error::NotFound(format!("user {}", u.id)));
        }
        ensure_an_admin_remains(&mut tx, admins_before).await?;
        if revoke_sessions {
            sqlx::query("DELETE FROM auth_tokens WHERE user_id = ? AND kind = 'session'")
                .bind(&u.id)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn delete_user(&self, id: &str, event: &Event) -> Result<()> {
        let mut tx = self.write.begin().await?;
        let admins_before = enabled_admins(&mut tx).await?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = ?")
            .bind(id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Err(Error::NotFound(format!("user {id}")));
        }
        ensure_an_admin_remains(&mut tx, admins_before).await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }
}

#[async_trait]
impl TokenStore for SqliteStore {
    async fn insert_token(&self, t: &TokenRecord, event: &Event) -> Result<()> {
        let mut tx = self.write.begin().await?;
        sqlx::query(
            "INSERT INTO auth_tokens (id, user_id, kind, name, token_hash, created_at,
                last_used_at, expires_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
        )
        .bind(&t.id)
        .bind(&t.user_id)
        .bind(t.kind.as_str())
        .bind(&t.name)
        .bind(&t.token_hash)
        .bind(ms(t.created_at))
        .bind(ms(t.last_used_at))
        .bind(t.expires_at.map(ms))
        .execute(&mut *tx)
        .await?;
        if t.kind == TokenKind::Session {
            sqlx::query("UPDATE users SET last_login_at = ? WHERE id = ?")
                .bind(ms(t.created_at))
                .bind(&t.user_id)
                .execute(&mut *tx)
                .await?;
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn token_with_owner(
        &self,
        token_hash: &str,
    ) -> Result<Option<(TokenRecord, UserRecord)>> {
        let Some(row) = sqlx::query("SELECT * FROM auth_tokens WHERE token_hash = ?")
            .bind(token_hash)
            .fetch_optional(&self.read)
            .await?
        else {
            return Ok(None);
        };
        let token = token_from_row(&row)?;
        let Some(user) = self.user_by_id(&token.user_id).await? else {
            return Ok(None);
        };
        Ok(user.enabled.then_some((token, user)))
    }

    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<()> {
        sqlx::query("UPDATE auth_tokens SET last_used_at = ? WHERE id = ?")
            .bind(ms(at))
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn list_tokens(&self, user_id: &str, kind: TokenKind) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM auth_tokens WHERE user_id = ? AND kind = ? ORDER BY created_at DESC",
        )
        .bind(user_id)
        .bind(kind.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn delete_token(&self, user_id: &str, token_id: &str, event: &Event) -> Result<bool> {
        let mut tx = self.write.begin().await?;
        let deleted = sqlx::query("DELETE FROM auth_tokens WHERE id = ? AND user_id = ?")
            .bind(token_id)
            .bind(user_id)
            .execute(&mut *tx)
            .await?;
        if deleted.rows_affected() == 0 {
            return Ok(false);
        }
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(true)
    }

    async fn delete_expired_token(&self, token_id: &str) -> Result<()> {
        sqlx::query("DELETE FROM auth_tokens WHERE id = ?")
            .bind(token_id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn purge_expired_tokens(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64> {
        let done = sqlx::query(
            "DELETE FROM auth_tokens WHERE (expires_at IS NOT NULL AND expires_at <= ?)
                OR (kind = 'session' AND last_used_at <= ?)",
        )
        .bind(ms(now))
        .bind(ms(idle_cutoff))
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }
}

fn push_event_filter(q: &mut QueryBuilder<'_, Sqlite>, f: &EventFilter) {
    q.push(" WHERE 1 = 1");
    let columns = [
        ("user_id", &f.user_id),
        ("username", &f.username),
        ("event_type", &f.event_type),
        ("target_type", &f.target_type),
        ("target_id", &f.target_id),
        ("server_id", &f.server_id),
    ];
    for (column, value) in columns {
        if let Some(v) = value {
            q.push(format_args!(" AND {column} = "))
                .push_bind(v.clone());
        }
    }
    if let Some(s) = f.severity {
        q.push(" AND severity = ").push_bind(s.as_str());
    }
    if let Some(t) = f.since {
        q.push(" AND ts >= ").push_bind(ms(t));
    }
    if let Some(t) = f.until {
        q.push(" AND ts <= ").push_bind(ms(t));
    }
}

#[async_trait]
impl EventStore for SqliteStore {
    async fn append_event(&self, event: &Event) -> Result<()> {
        let mut conn = self.write.acquire().await?;
        insert_event(&mut conn, event).await?;
        self.events_committed();
        Ok(())
    }

    async fn undispatched_events(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Event)>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE dispatched_at IS NULL AND seq > ? ORDER BY seq LIMIT ?",
        )
        .bind(after_seq)
        .bind(i64::from(limit))
        .fetch_all(&self.read)
        .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("seq")?, event_from_row(row)?)))
            .collect()
    }

    async fn mark_dispatched(&self, up_to_seq: i64, at: DateTime<Utc>) -> Result<u64> {
        let done = sqlx::query(
            "UPDATE events SET dispatched_at = ? WHERE dispatched_at IS NULL AND seq <= ?",
        )
        .bind(ms(at))
        .bind(up_to_seq)
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }

    fn event_signal(&self) -> Arc<Notify> {
        self.new_events.clone()
    }

    fn event_commits(&self) -> u64 {
        self.event_commits
            .load(std::sync::atomic::Ordering::Acquire)
    }

    async fn event_by_id(&self, event_id: &str) -> Result<Option<Event>> {
        let row = sqlx::query("SELECT * FROM events WHERE event_id = ?")
            .bind(event_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn query_events(&self, f: &EventFilter) -> Result<(Vec<Event>, u64)> {
        let mut q = QueryBuilder::new("SELECT * FROM events");
        push_event_filter(&mut q, f);
        q.push(" ORDER BY seq DESC LIMIT ")
            .push_bind(i64::from(f.limit))
            .push(" OFFSET ")
            .push_bind(i64::try_from(f.offset).unwrap_or(i64::MAX));
        let rows = q.build().fetch_all(&self.read).await?;
        let events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>>>()?;
        let mut count = QueryBuilder::new("SELECT COUNT(*) FROM events");
        push_event_filter(&mut count, f);
        let total: i64 = count.build_query_scalar().fetch_one(&self.read).await?;
        Ok((events, total as u64))
    }
}

#[async_trait]
impl Store for SqliteStore {
    async fn check_ready(&self) -> Result<()> {
        // The answer is public: say what failed and keep the driver's details for the log.
        fn unavailable(what: &'static str) -> impl Fn(sqlx::Error) -> Error {
            move |e| {
                tracing::warn!(error = %e, "readiness: database {what} failed");
                Error::Unavailable(format!("database {what} failed"))
            }
        }
        sqlx::query("SELECT 1")
            .execute(&self.read)
            .await
            .map_err(unavailable("read"))?;
        sqlx::query(
            "INSERT INTO health_probe (id, checked_at) VALUES (1, ?)
             ON CONFLICT (id) DO UPDATE SET checked_at = excluded.checked_at",
        )
        .bind(ms(Utc::now()))
        .execute(&self.write)
        .await
        .map_err(unavailable("write"))?;
        Ok(())
    }

    async fn queue_depths(&self) -> Result<QueueDepths> {
        let events: i64 =
            sqlx::query_scalar("SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL")
                .fetch_one(&self.read)
                .await?;
        let jobs: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM webhook_jobs")
            .fetch_one(&self.read)
            .await?;
        Ok(QueueDepths {
            undispatched_events: events as u64,
            webhook_jobs: jobs as u64,
        })
    }

    async fn close(&self) {
        self.read.close().await;
        self.write.close().await;
    }

    /// One hub per SQLite database: it always leads, without writing (a database that
    /// refuses writes for a while must not cost it the lease). `hub_leases` stays empty here.
    async fn try_lease(
        &self,
        _name: &str,
        _holder: &str,
        _now: DateTime<Utc>,
        _until: DateTime<Utc>,
    ) -> Result<bool> {
        Ok(true)
    }

    async fn release_lease(&self, _name: &str, _holder: &str) -> Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod query_plans {
    use super::*;

    /// The statements the store runs per request, per event or per delivery (as written in this
    /// module and in `webhooks.rs`, with literals for their binds).
    const HOT_QUERIES: &[(&str, &str)] = &[
        ("session lookup", "SELECT * FROM auth_tokens WHERE token_hash = 'x'"),
        ("user lookup", "SELECT * FROM users WHERE username = 'x'"),
        (
            "outbox fetch",
            "SELECT * FROM events WHERE dispatched_at IS NULL AND seq > 0 ORDER BY seq LIMIT 256",
        ),
        (
            "outbox mark",
            "UPDATE events SET dispatched_at = 1 WHERE dispatched_at IS NULL AND seq <= 10",
        ),
        ("outbox depth", "SELECT COUNT(*) FROM events WHERE dispatched_at IS NULL"),
        ("event by id", "SELECT * FROM events WHERE event_id = 'x'"),
        (
            "audit log by type",
            "SELECT * FROM events WHERE 1 = 1 AND event_type = 'x' ORDER BY seq DESC LIMIT 100",
        ),
        (
            "audit log by target",
            "SELECT * FROM events WHERE 1 = 1 AND target_type = 'x' AND target_id = 'y' \
             ORDER BY seq DESC LIMIT 100",
        ),
        (
            "job claim",
            "SELECT j.id FROM webhook_jobs j JOIN webhooks w ON w.id = j.webhook_id
             WHERE w.enabled AND j.next_attempt_at <= 5
               AND (j.locked_until IS NULL OR j.locked_until <= 5)
               AND (SELECT COUNT(*) FROM webhook_jobs k
                    WHERE k.webhook_id = j.webhook_id AND k.locked_until > 5) < 2
             ORDER BY j.next_attempt_at, j.id LIMIT 1",
        ),
        (
            "delivery log page",
            "SELECT * FROM webhook_deliveries WHERE webhook_id = 'w' AND ('x' IS NULL OR status = 'x')
             ORDER BY delivered_at DESC, id DESC LIMIT 50 OFFSET 0",
        ),
        ("delivery pruning", "DELETE FROM webhook_deliveries WHERE delivered_at < 5"),
        ("pending per webhook", "SELECT COUNT(*) FROM webhook_jobs WHERE webhook_id = 'w'"),
        (
            "report: server state",
            "UPDATE servers SET last_seen_at = 1, agent_version = 'v' WHERE seq = 7",
        ),
        ("report: status change", "UPDATE servers SET status = 'online' WHERE seq = 7"),
        (
            "history raw",
            "SELECT ts, cpu FROM metrics_raw WHERE seq = 7 AND ts BETWEEN 1 AND 2              AND cpu IS NOT NULL ORDER BY ts",
        ),
        (
            "history 1m",
            "SELECT bucket, cpu_min, cpu_max FROM metrics_1m WHERE seq = 7              AND bucket BETWEEN 1 AND 2 AND cpu_n > 0 ORDER BY bucket",
        ),
        (
            "history 1h",
            "SELECT bucket, cpu_min, cpu_max FROM metrics_1h WHERE seq = 7              AND bucket BETWEEN 1 AND 2 AND cpu_n > 0 ORDER BY bucket",
        ),
        ("retention raw", "DELETE FROM metrics_raw WHERE seq = 7 AND ts < 5"),
        ("retention 1m", "DELETE FROM metrics_1m WHERE seq = 7 AND bucket < 5"),
        ("inventory", "SELECT received_at, changed_at, data FROM inventory WHERE seq = 7"),
        ("server deletion", "DELETE FROM metrics_raw WHERE seq = 7"),
        (
            "tasks handed to an agent",
            "SELECT * FROM tasks WHERE server_id = 's' AND status IN ('queued', 'running')
             ORDER BY created_at, id",
        ),
        (
            "running tasks to reconcile",
            "SELECT * FROM tasks WHERE status IN ('queued', 'running') AND status = 'running'
                AND started_at < 5 ORDER BY started_at",
        ),
        (
            "task list of a user",
            "SELECT * FROM tasks WHERE 1 = 1 AND created_by = 'u' \
             ORDER BY created_at DESC, id DESC LIMIT 50 OFFSET 0",
        ),
        ("task by id", "SELECT * FROM tasks WHERE id = 't'"),
        (
            "firing alerts",
            "SELECT * FROM alerts WHERE status = 'firing' ORDER BY fired_at",
        ),
        (
            "alerts of a server",
            "SELECT * FROM alerts WHERE 1 = 1 AND server_id = 's' \
             ORDER BY fired_at DESC, id DESC LIMIT 50 OFFSET 0",
        ),
        (
            "alert resolution",
            "UPDATE alerts SET status = 'resolved' WHERE id = 'a' AND status = 'firing'",
        ),
    ];

    /// Tables that grow without bound; a plain scan of one is a bug on a hot path.
    const LARGE_TABLES: &[&str] = &[
        "events",
        "auth_tokens",
        "webhook_jobs",
        "webhook_deliveries",
        "servers",
        "inventory",
        "metrics_raw",
        "metrics_1m",
        "metrics_1h",
        "tasks",
        "alerts",
    ];

    #[tokio::test]
    async fn hot_queries_use_indexes_on_large_tables() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("plan.db").display());
        let store = SqliteStore::open(&url).await.unwrap();
        let mut offenders = Vec::new();
        for (name, sql) in HOT_QUERIES {
            let rows = sqlx::query(&format!("EXPLAIN QUERY PLAN {sql}"))
                .fetch_all(&store.read)
                .await
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            for row in rows {
                let detail: String = row.get("detail");
                let scans_large = LARGE_TABLES
                    .iter()
                    .any(|t| detail.starts_with(&format!("SCAN {t}")) && !detail.contains("USING"));
                if scans_large {
                    offenders.push(format!("{name}: {detail}"));
                }
            }
        }
        assert!(
            offenders.is_empty(),
            "full scans on hot paths:\n{}",
            offenders.join("\n")
        );
    }
}
