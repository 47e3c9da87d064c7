//! PostgreSQL backend, for several hubs on one database (DESIGN section 8).
//!
//! The SQL mirrors the SQLite backend's; what differs is the dialect (`$n` parameters,
//! `GREATEST`, `ON CONFLICT DO NOTHING`), what several writers need (the event log appended
//! under a transaction-level advisory lock, so event sequence numbers commit in order and the
//! dispatcher's "everything up to seq N" stays true; jobs claimed with `FOR UPDATE SKIP
//! LOCKED`; rows locked in one order), and fewer round trips where they cost (ingest batches
//! written with one statement per kind of row).

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use async_trait::async_trait;
use chrono::{DateTime, Utc};
use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions};
use sqlx::{PgConnection, Postgres, QueryBuilder, Row};
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

static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations/postgres");

/// How often a hub looks for events other hubs appended.
const WATCH_EVERY: Duration = Duration::from_secs(1);

/// Other hubs append events too, and their commits send this one no signal: watch the log's
/// end, and on a change wake the dispatcher and invalidate the caches of event reads, as a
/// local commit does. Ends when the store is closed.
async fn watch_other_writers(store: PgStore) {
    let mut last = None;
    while !store.write.is_closed() {
        tokio::time::sleep(WATCH_EVERY).await;
        let end: std::result::Result<Option<i64>, _> =
            sqlx::query_scalar("SELECT MAX(seq) FROM events")
                .fetch_one(&store.read)
                .await;
        match end {
            Ok(end) => {
                if last.is_some_and(|l| l != end) {
                    store.events_committed();
                }
                last = Some(end);
            }
            Err(e) if !store.write.is_closed() => {
                tracing::debug!(error = %e, "cannot read the event log's end");
            }
            Err(_) => {}
        }
    }
}

/// Connections per hub. Every statement is a network round trip, so the pool is what lets
/// the ingest writer, the delivery workers and API reads overlap.
const POOL_SIZE: u32 = 16;

/// Advisory lock key held by every transaction that appends to the event log ("smonevnt").
const EVENT_LOG_LOCK: i64 = 0x736d_6f6e_6576_6e74;
/// Advisory lock key held by every change that could take away the last admin ("smonadmn").
const ADMINS_LOCK: i64 = 0x736d_6f6e_6164_6d6e;

/// The PostgreSQL store. `read` and `write` are one pool: the names keep the statements the
/// same as the SQLite backend's, where they are two.
#[derive(Clone)]
pub struct PgStore {
    read: PgPool,
    write: PgPool,
    new_events: Arc<Notify>,
    new_jobs: Arc<Notify>,
    /// Bumped after every commit that wrote an event (caches of event reads key on it).
    event_commits: Arc<std::sync::atomic::AtomicU64>,
    /// Delivery attempts to record, batched by [`webhooks::run_finisher`].
    finishes: tokio::sync::mpsc::UnboundedSender<webhooks::Finish>,
}

impl PgStore {
    /// Connect to the database at `url` and apply pending migrations (several hubs starting
    /// at once are serialised by sqlx's migration lock).
    pub async fn open(url: &str) -> Result<Self> {
        let options: PgConnectOptions = url.parse().with_context(|| {
            format!("invalid PostgreSQL URL {}", crate::config::redact_url(url))
        })?;
        // Like SQLite's busy timeout: a statement waits this long for a lock held elsewhere
        // (a stuck session, a long migration), then fails, so requests answer 503 rather
        // than hang.
        let options = options.options([("lock_timeout", "5s")]);
        let pool = PgPoolOptions::new()
            .max_connections(POOL_SIZE)
            .acquire_timeout(Duration::from_secs(10))
            .connect_with(options)
            .await
            .with_context(|| format!("cannot connect to {}", crate::config::redact_url(url)))?;
        MIGRATOR.run(&pool).await?;
        let (finishes, requests) = tokio::sync::mpsc::unbounded_channel();
        let store = Self {
            read: pool.clone(),
            write: pool,
            new_events: Arc::new(Notify::new()),
            new_jobs: Arc::new(Notify::new()),
            event_commits: Arc::default(),
            finishes,
        };
        // The finisher and the watcher hold a store without a sender of its own, so the
        // finisher ends when the last handle of this store is dropped (or it is closed).
        let (closed, _) = tokio::sync::mpsc::unbounded_channel();
        let background = Self {
            finishes: closed,
            ..store.clone()
        };
        tokio::spawn(webhooks::run_finisher(background.clone(), requests));
        tokio::spawn(watch_other_writers(background));
        Ok(store)
    }

    /// The pool, for the data migration.
    pub(crate) fn pool(&self) -> &PgPool {
        &self.write
    }
}

impl PgStore {
    /// A transaction that will append events: it takes the event log's lock before any row
    /// lock, so event-writing transactions queue on that one lock and never deadlock on rows.
    async fn begin_events(&self) -> Result<sqlx::Transaction<'static, Postgres>> {
        let mut tx = self.write.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock($1)")
            .bind(EVENT_LOG_LOCK)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    /// After a commit that wrote events: wake the dispatcher, and let caches of event reads
    /// know.
    fn events_committed(&self) {
        self.event_commits
            .fetch_add(1, std::sync::atomic::Ordering::Release);
        self.new_events.notify_one();
    }
}

/// Append an event. Call it inside a transaction: the lock it takes is held until commit,
/// so events become visible in sequence order even with several writers.
async fn insert_event(conn: &mut PgConnection, e: &Event) -> Result<()> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(EVENT_LOG_LOCK)
        .execute(&mut *conn)
        .await?;
    sqlx::query(
        "INSERT INTO events (event_id, event_type, ts, user_id, username, server_id, server_name,
            target_type, target_id, action, meta, ip, user_agent, severity)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14)",
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

/// Counts the enabled admins. Taken first in every change to users, the lock it holds until
/// commit serialises those changes: two admins demoting each other at once cannot both see
/// the other still an admin.
async fn enabled_admins(conn: &mut PgConnection) -> Result<i64> {
    sqlx::query("SELECT pg_advisory_xact_lock($1)")
        .bind(ADMINS_LOCK)
        .execute(&mut *conn)
        .await?;
    let n = sqlx::query_scalar("SELECT COUNT(*) FROM users WHERE role = 'admin' AND enabled")
        .fetch_one(conn)
        .await?;
    Ok(n)
}

/// Refuse a change that took away the last enabled admin (called inside the change's
/// transaction, after the change, with the count from before it). A database that never had
/// an admin (users made with the CLI before the first start) is not blocked.
async fn ensure_an_admin_remains(conn: &mut PgConnection, before: i64) -> Result<()> {
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
impl UserStore for PgStore {
    async fn count_users(&self) -> Result<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM users")
            .fetch_one(&self.read)
            .await?;
        Ok(n as u64)
    }

    async fn insert_user(&self, u: &UserRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        let inserted = sqlx::query(
            "INSERT INTO users (id, username, email, role, enabled, password_hash, created_at,
                updated_at, last_login_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
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
        let row = sqlx::query("SELECT * FROM users WHERE id = $1")
            .bind(id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(user_from_row).transpose()
    }

    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>> {
        let row = sqlx::query("SELECT * FROM users WHERE username = $1")
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
        let mut tx = self.begin_events().await?;
        let admins_before = enabled_admins(&mut tx).await?;
        let updated = sqlx::query(
            "UPDATE users SET username = $1, email = $2, role = $3, enabled = $4, password_hash = $5,
                updated_at = $6 WHERE id = $7",
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
            sqlx::query("DELETE FROM auth_tokens WHERE user_id = $1 AND kind = 'session'")
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
        let mut tx = self.begin_events().await?;
        let admins_before = enabled_admins(&mut tx).await?;
        let deleted = sqlx::query("DELETE FROM users WHERE id = $1")
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
impl TokenStore for PgStore {
    async fn insert_token(&self, t: &TokenRecord, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        sqlx::query(
            "INSERT INTO auth_tokens (id, user_id, kind, name, token_hash, created_at,
                last_used_at, expires_at) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)",
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
            sqlx::query("UPDATE users SET last_login_at = $1 WHERE id = $2")
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
        let Some(row) = sqlx::query("SELECT * FROM auth_tokens WHERE token_hash = $1")
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
        sqlx::query("UPDATE auth_tokens SET last_used_at = $1 WHERE id = $2")
            .bind(ms(at))
            .bind(id)
            .execute(&self.write)
            .await?;
        Ok(())
    }

    async fn list_tokens(&self, user_id: &str, kind: TokenKind) -> Result<Vec<TokenRecord>> {
        let rows = sqlx::query(
            "SELECT * FROM auth_tokens WHERE user_id = $1 AND kind = $2 ORDER BY created_at DESC",
        )
        .bind(user_id)
        .bind(kind.as_str())
        .fetch_all(&self.read)
        .await?;
        rows.iter().map(token_from_row).collect()
    }

    async fn delete_token(&self, user_id: &str, token_id: &str, event: &Event) -> Result<bool> {
        let mut tx = self.begin_events().await?;
        let deleted = sqlx::query("DELETE FROM auth_tokens WHERE id = $1 AND user_id = $2")
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
        sqlx::query("DELETE FROM auth_tokens WHERE id = $1")
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
            "DELETE FROM auth_tokens WHERE (expires_at IS NOT NULL AND expires_at <= $1)
                OR (kind = 'session' AND last_used_at <= $2)",
        )
        .bind(ms(now))
        .bind(ms(idle_cutoff))
        .execute(&self.write)
        .await?;
        Ok(done.rows_affected())
    }
}

fn push_event_filter(q: &mut QueryBuilder<'_, Postgres>, f: &EventFilter) {
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
impl EventStore for PgStore {
    async fn append_event(&self, event: &Event) -> Result<()> {
        let mut tx = self.begin_events().await?;
        insert_event(&mut tx, event).await?;
        tx.commit().await?;
        self.events_committed();
        Ok(())
    }

    async fn undispatched_events(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Event)>> {
        let rows = sqlx::query(
            "SELECT * FROM events WHERE dispatched_at IS NULL AND seq > $1 ORDER BY seq LIMIT $2",
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
            "UPDATE events SET dispatched_at = $1 WHERE dispatched_at IS NULL AND seq <= $2",
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
        let row = sqlx::query("SELECT * FROM events WHERE event_id = $1")
            .bind(event_id)
            .fetch_optional(&self.read)
            .await?;
        row.as_ref().map(event_from_row).transpose()
    }

    async fn query_events(&self, f: &EventFilter) -> Result<(Vec<Event>, u64)> {
        // PostgreSQL text holds no NUL, so such a filter matches nothing (and cannot be bound).
        let filters = [
            &f.user_id,
            &f.username,
            &f.event_type,
            &f.target_type,
            &f.target_id,
            &f.server_id,
        ];
        if filters
            .iter()
            .any(|v| v.as_ref().is_some_and(|v| v.contains('\0')))
        {
            return Ok((Vec::new(), 0));
        }
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
impl Store for PgStore {
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
            "INSERT INTO health_probe (id, checked_at) VALUES (1, $1)
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

    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool> {
        let row = sqlx::query(
            "INSERT INTO hub_leases (name, holder, expires_at) VALUES ($1, $2, $3)
             ON CONFLICT (name) DO UPDATE SET holder = excluded.holder,
                expires_at = excluded.expires_at
             WHERE hub_leases.holder = excluded.holder OR hub_leases.expires_at <= $4
             RETURNING holder",
        )
        .bind(name)
        .bind(holder)
        .bind(ms(until))
        .bind(ms(now))
        .fetch_optional(&self.write)
        .await?;
        Ok(row.is_some())
    }

    async fn release_lease(&self, name: &str, holder: &str) -> Result<()> {
        sqlx::query("DELETE FROM hub_leases WHERE name = $1 AND holder = $2")
            .bind(name)
            .bind(holder)
            .execute(&self.write)
            .await?;
        Ok(())
    }
}
