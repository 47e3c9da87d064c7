//! The store: SQL behind traits named by what they hold, one implementation per backend.
//!
//! Every method that changes state takes the [`Event`] describing the change and writes it in
//! the same transaction, so the event log never misses or invents a change.

pub mod migrate;
pub mod postgres;
mod rows;
pub mod sqlite;

/// The database kinds a hub can use, named by their URL's scheme.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// `sqlite://path`: one hub, the default.
    Sqlite,
    /// `postgres://` or `postgresql://`: one or several hubs.
    Postgres,
}

impl Backend {
    /// The backend a database URL names, if any.
    pub fn of_url(url: &str) -> Option<Backend> {
        if url.starts_with("sqlite:") {
            Some(Backend::Sqlite)
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Some(Backend::Postgres)
        } else {
            None
        }
    }
}

/// Open the store a database URL names, applying its pending migrations.
pub async fn open(url: &str) -> Result<Arc<dyn Store>> {
    match Backend::of_url(url) {
        Some(Backend::Sqlite) => Ok(Arc::new(sqlite::SqliteStore::open(url).await?)),
        Some(Backend::Postgres) => Ok(Arc::new(postgres::PgStore::open(url).await?)),
        None => Err(crate::error::Error::BadRequest(format!(
            "{:?} is neither a sqlite: nor a postgres:// URL",
            crate::config::redact_url(url)
        ))),
    }
}

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::auth::roles::Role;
use crate::error::Result;
use crate::events::{Event, EventFilter, Severity};

/// A user row.
#[derive(Clone)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub enabled: bool,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("enabled", &self.enabled)
            .field("password_hash", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A login session (cookie or bearer): idle and absolute expiry.
    Session,
    /// A personal API token for automation: optional absolute expiry only.
    Personal,
}

impl TokenKind {
    /// The database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Personal => "personal",
        }
    }
}

/// A session or personal token row; only the token's hash is kept.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub kind: TokenKind,
    pub name: Option<String>,
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Users.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// How many users exist.
    async fn count_users(&self) -> Result<u64>;
    /// Insert a user; `Conflict` when the username is taken.
    async fn insert_user(&self, user: &UserRecord, event: &Event) -> Result<()>;
    /// One user by id.
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>>;
    /// One user by username.
    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>>;
    /// All users, by username.
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Replace a user's fields. With `revoke_sessions` the user's login sessions go too.
    /// `Conflict` when no enabled admin would remain, or the new username is taken.
    async fn update_user(
        &self,
        user: &UserRecord,
        revoke_sessions: bool,
        event: &Event,
    ) -> Result<()>;
    /// Delete a user and their tokens; `NotFound`, or `Conflict` for the last enabled admin.
    async fn delete_user(&self, id: &str, event: &Event) -> Result<()>;
}

/// Login sessions and personal tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Store a new token. A session also stamps the user's `last_login_at`.
    async fn insert_token(&self, token: &TokenRecord, event: &Event) -> Result<()>;
    /// The token with this hash and its (enabled) owner.
    async fn token_with_owner(&self, token_hash: &str)
    -> Result<Option<(TokenRecord, UserRecord)>>;
    /// Record that a token was used.
    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
    /// A user's tokens of one kind, newest first.
    async fn list_tokens(&self, user_id: &str, kind: TokenKind) -> Result<Vec<TokenRecord>>;
    /// Delete one of a user's tokens; false when it did not exist.
    async fn delete_token(&self, user_id: &str, token_id: &str, event: &Event) -> Result<bool>;
    /// Delete a token found expired while authenticating (no event: nobody acted).
    async fn delete_expired_token(&self, token_id: &str) -> Result<()>;
    /// Delete every token past its absolute expiry and every session idle since `idle_cutoff`.
    async fn purge_expired_tokens(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64>;
}

/// The event log.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Append an event that accompanies no other change (a failed login).
    async fn append_event(&self, event: &Event) -> Result<()>;
    /// Events matching the filter, newest first, and how many match in all.
    async fn query_events(&self, filter: &EventFilter) -> Result<(Vec<Event>, u64)>;
    /// Up to `limit` events not yet dispatched with a position after `after_seq`, oldest first.
    async fn undispatched_events(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Event)>>;
    /// Mark every undispatched event up to and including `up_to_seq` as dispatched.
    async fn mark_dispatched(&self, up_to_seq: i64, at: DateTime<Utc>) -> Result<u64>;
    /// Notified after every commit that wrote an event, so the dispatcher need not poll hard.
    fn event_signal(&self) -> Arc<Notify>;
    /// How many commits that wrote events this store has made (a cache of event reads is
    /// stale once it changes).
    fn event_commits(&self) -> u64;
    /// One event by id.
    async fn event_by_id(&self, event_id: &str) -> Result<Option<Event>>;
}

/// A managed webhook row. Secrets are sealed (see [`crate::secrets::SecretBox`]).
#[derive(Clone)]
pub struct WebhookRecord {
    pub id: String,
    pub name: String,
    pub url: String,
    pub secret: Option<String>,
    pub previous_secret: Option<String>,
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
    pub enabled: bool,
    /// `None` means every type.
    pub event_types: Option<Vec<String>>,
    pub retry_max: u32,
    pub timeout_secs: u32,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_triggered_at: Option<DateTime<Utc>>,
    pub failing_since: Option<DateTime<Utc>>,
    pub disabled_reason: Option<String>,
    /// Set when this target is a notification channel rather than a managed webhook.
    pub channel: Option<ChannelFields>,
}

/// What makes a delivery target a notification channel.
#[derive(Clone)]
pub struct ChannelFields {
    /// `email`, `slack`, `discord`, `teams`, `telegram`, `ntfy` or `webhook`.
    pub kind: String,
    /// The kind's settings as sealed JSON (secrets included).
    pub config: String,
    /// Routing and pacing as JSON (not secret).
    pub routing: String,
}

/// One event for a channel, to add to the group it belongs to.
#[derive(Debug, Clone)]
pub struct NotificationItem {
    pub channel_id: String,
    /// Events with the same key within `window` go out as one message.
    pub group_key: String,
    pub window: chrono::Duration,
    pub event: Event,
}

impl WebhookRecord {
    /// Whether events of this type go to this webhook.
    pub fn wants(&self, event_type: &str) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|types| types.iter().any(|t| t == event_type))
    }
}

/// A delivery still to make.
#[derive(Debug, Clone)]
pub struct JobRecord {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    pub payload: String,
    /// Attempts made so far.
    pub attempt: u32,
    pub next_attempt_at: DateTime<Utc>,
}

/// One attempt, as the delivery log shows it.
#[derive(Debug, Clone)]
pub struct DeliveryRecord {
    pub id: String,
    pub webhook_id: String,
    pub event_id: String,
    pub event_type: String,
    /// `success`, `failed` or `retrying`.
    pub status: &'static str,
    pub status_code: Option<u16>,
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub attempt: u32,
    pub delivered_at: DateTime<Utc>,
    pub duration_ms: u64,
}

/// What an attempt changes besides its log row.
pub struct AttemptEffects<'a> {
    /// When to try again; `None` ends the job.
    pub retry_at: Option<DateTime<Utc>>,
    /// The receiver accepted it (ends a run of failures).
    pub succeeded: bool,
    /// Disable the webhook with this reason, recording this `webhook.disabled` event.
    pub disable: Option<(&'a str, &'a Event)>,
}

/// Managed webhooks, their delivery queue and log.
#[async_trait]
pub trait WebhookStore: Send + Sync {
    /// Insert a webhook.
    async fn insert_webhook(&self, webhook: &WebhookRecord, event: &Event) -> Result<()>;
    /// One webhook.
    async fn webhook(&self, id: &str) -> Result<Option<WebhookRecord>>;
    /// Every managed webhook, oldest first.
    async fn list_webhooks(&self) -> Result<Vec<WebhookRecord>>;
    /// Every notification channel, oldest first.
    async fn list_channels(&self) -> Result<Vec<WebhookRecord>>;
    /// Hand a claimed job back without an attempt, due again at `at` (a channel over its rate).
    async fn defer_job(&self, job_id: &str, at: DateTime<Utc>) -> Result<()>;
    /// Replace a webhook's fields; `NotFound` when it is gone.
    async fn update_webhook(&self, webhook: &WebhookRecord, event: &Event) -> Result<()>;
    /// Delete a webhook, its queue and its log; `NotFound` when it is gone.
    async fn delete_webhook(&self, id: &str, event: &Event) -> Result<()>;
    /// In one transaction: queue a delivery of each event to every enabled managed webhook that
    /// wants it (a delivery already queued for the same webhook and event is not queued twice),
    /// and add each notification item to its channel's open group (a job gathering events
    /// until it falls due), or open a group due after its window. Returns the jobs and events
    /// queued.
    async fn enqueue_for_events(
        &self,
        events: &[Event],
        notifications: &[NotificationItem],
        now: DateTime<Utc>,
    ) -> Result<u64>;
    /// Queue one delivery; `Conflict` when the same event is already queued for the webhook.
    async fn enqueue_job(&self, job: &JobRecord) -> Result<()>;
    /// Lease the most overdue job of an enabled webhook with fewer than `per_webhook`
    /// deliveries in progress. The lease lasts twice the webhook's timeout (an e-mail may
    /// connect, then send) plus `lease_margin`, so it outlives the attempt: no other worker or
    /// hub takes the job while it runs, and a crashed hub's jobs come back soon after.
    async fn claim_job(
        &self,
        now: DateTime<Utc>,
        lease_margin: std::time::Duration,
        per_webhook: usize,
    ) -> Result<Option<(JobRecord, WebhookRecord)>>;
    /// Record an attempt and its effects in one transaction.
    async fn finish_attempt(
        &self,
        job: &JobRecord,
        delivery: &DeliveryRecord,
        effects: AttemptEffects<'_>,
    ) -> Result<()>;
    /// Record a test delivery with its `webhook.test` event (written as already dispatched:
    /// a test goes to its webhook only).
    async fn record_test(&self, delivery: &DeliveryRecord, event: &Event) -> Result<()>;
    /// A webhook's delivery log, newest first, and the total matching.
    async fn deliveries(
        &self,
        webhook_id: &str,
        status: Option<&str>,
        limit: u32,
        offset: u64,
    ) -> Result<(Vec<DeliveryRecord>, u64)>;
    /// One logged attempt of a webhook.
    async fn delivery(&self, webhook_id: &str, delivery_id: &str)
    -> Result<Option<DeliveryRecord>>;
    /// Deliveries queued for a webhook.
    async fn pending_jobs(&self, webhook_id: &str) -> Result<u64>;
    /// When the next queued job falls due, if any.
    async fn next_due(&self) -> Result<Option<DateTime<Utc>>>;
    /// Drop the leases a previous run of this hub left (SQLite: one hub, so all of them;
    /// PostgreSQL: none, since other hubs may hold them and leases expire).
    async fn release_leases(&self) -> Result<u64>;
    /// Delete log rows delivered before `before`.
    async fn prune_deliveries(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Notified when jobs are queued.
    fn job_signal(&self) -> Arc<Notify>;
}

/// Whether a server reports.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum ServerStatus {
    /// Never reported.
    Unknown,
    Online,
    /// Missed its reports (`fleet.offline_after_intervals`).
    Offline,
}

impl ServerStatus {
    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            ServerStatus::Unknown => "unknown",
            ServerStatus::Online => "online",
            ServerStatus::Offline => "offline",
        }
    }

    /// Parse a wire or database name.
    pub fn parse(s: &str) -> Option<Self> {
        [Self::Unknown, Self::Online, Self::Offline]
            .into_iter()
            .find(|v| v.as_str() == s)
    }
}

/// A server row. `seq` keys its metrics; `id` is what the API shows.
#[derive(Clone)]
pub struct ServerRecord {
    pub seq: i64,
    pub id: String,
    pub name: String,
    pub description: Option<String>,
    pub tags: Vec<String>,
    pub token_hash: String,
    /// The hub's own machine, reported by its embedded agent.
    pub is_local: bool,
    /// Interval the hub asks the agent to use; `None` leaves it to the agent.
    pub interval_secs: Option<u32>,
    pub status: ServerStatus,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub agent_version: Option<String>,
    pub agent_interval_secs: Option<u32>,
    /// The last sample as JSON.
    pub latest_sample: Option<String>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// A server's status, last report and last settings change.
#[derive(Debug, Clone)]
pub struct ServerMark {
    pub id: String,
    pub status: ServerStatus,
    pub last_seen_at: Option<DateTime<Utc>>,
    pub updated_at: DateTime<Utc>,
}

impl ServerRecord {
    /// A server that has never reported, with everything else to fill in.
    pub fn new(id: String, name: String, token_hash: String, now: DateTime<Utc>) -> Self {
        ServerRecord {
            seq: 0,
            id,
            name,
            description: None,
            tags: Vec::new(),
            token_hash,
            is_local: false,
            interval_secs: None,
            status: ServerStatus::Unknown,
            last_seen_at: None,
            agent_version: None,
            agent_interval_secs: None,
            latest_sample: None,
            created_by: None,
            created_at: now,
            updated_at: now,
        }
    }
}

/// A metric's values in one sample, in [`crate::fleet::metric::Metric::ALL`] order.
pub type MetricValues = [Option<f64>; crate::fleet::metric::Metric::COUNT];

/// What one accepted report writes.
#[derive(Debug, Clone)]
pub struct ReportWrite {
    pub seq: i64,
    /// Each sample's time and values.
    pub samples: Vec<(DateTime<Utc>, MetricValues)>,
    /// The newest sample as JSON, with its time: becomes the server's latest state.
    pub latest: Option<(DateTime<Utc>, String)>,
    pub seen_at: DateTime<Utc>,
    pub agent_version: String,
    pub agent_interval_secs: u32,
    /// The inventory as JSON, when the report carried one.
    pub inventory: Option<String>,
}

/// One item for the fleet writer; applied in order, many per transaction.
#[derive(Debug, Clone)]
pub enum FleetWrite {
    Report(ReportWrite),
    /// A server went online or offline, with its event.
    Status {
        seq: i64,
        status: ServerStatus,
        event: Box<Event>,
    },
}

/// A history tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
pub enum Tier {
    #[serde(rename = "raw")]
    Raw,
    #[serde(rename = "1m")]
    Minute,
    #[serde(rename = "1h")]
    Hour,
}

impl Tier {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Raw => "raw",
            Tier::Minute => "1m",
            Tier::Hour => "1h",
        }
    }
}

/// Where each tier lives, the same on every backend.
impl Tier {
    pub(crate) fn table(self) -> &'static str {
        match self {
            Tier::Raw => "metrics_raw",
            Tier::Minute => "metrics_1m",
            Tier::Hour => "metrics_1h",
        }
    }

    /// A rollup bucket's width in ms (a raw point is its own).
    pub(crate) fn width_ms(self) -> i64 {
        match self {
            Tier::Raw => 1,
            Tier::Minute => 60_000,
            Tier::Hour => 3_600_000,
        }
    }

    pub(crate) fn time_column(self) -> &'static str {
        match self {
            Tier::Raw => "ts",
            _ => "bucket",
        }
    }
}

/// One point of history. A raw point has min = max = avg = last.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct HistoryPoint {
    pub ts: DateTime<Utc>,
    pub min: f64,
    pub max: f64,
    pub avg: f64,
    pub last: f64,
}

/// Servers, their reports, inventory and metrics history.
#[async_trait]
pub trait FleetStore: Send + Sync {
    /// Insert a server and return its `seq`; `Conflict` when the name is taken.
    async fn insert_server(&self, server: &ServerRecord, event: &Event) -> Result<i64>;
    /// Every server (loaded once at start; the fleet service keeps them in memory).
    async fn list_servers(&self) -> Result<Vec<ServerRecord>>;
    /// For every server, what changes when another hub writes it (several hubs on one
    /// database compare these with their memory).
    async fn server_marks(&self) -> Result<Vec<ServerMark>>;
    /// The servers with these ids that exist.
    async fn servers_with_ids(&self, ids: &[String]) -> Result<Vec<ServerRecord>>;
    /// Replace a server's settings (name, description, tags, interval, token hash);
    /// `NotFound`, or `Conflict` when the new name is taken.
    async fn update_server(&self, server: &ServerRecord, event: &Event) -> Result<()>;
    /// Delete a server with its inventory and history; `NotFound` when it is gone.
    async fn delete_server(&self, seq: i64, event: &Event) -> Result<()>;
    /// Apply writes in order in one transaction; returns how many samples were new (a sample
    /// already stored, or of a server deleted meanwhile, is skipped).
    async fn write_fleet(&self, writes: &[FleetWrite]) -> Result<u64>;
    /// A server's inventory: when last received, when it last changed, and the JSON.
    async fn inventory(&self, seq: i64) -> Result<Option<(DateTime<Utc>, DateTime<Utc>, String)>>;
    /// A metric's history of one server within `[from, to]`, oldest first.
    async fn history(
        &self,
        seq: i64,
        tier: Tier,
        metric: crate::fleet::metric::Metric,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Result<Vec<HistoryPoint>>;
    /// Delete a tier's points older than `before` for these servers.
    async fn prune_history(&self, seqs: &[i64], tier: Tier, before: DateTime<Utc>) -> Result<u64>;
}

/// Where a task stands.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize, utoipa::ToSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    /// Waiting for the agent to pick it up.
    Queued,
    Running,
    /// Exited with code 0.
    Finished,
    /// Exited with another code, could not start, or was refused by the agent.
    Failed,
    /// Killed at its timeout.
    Timeout,
    Cancelled,
    /// No result arrived within its timeout after it started (agent or hub restarted).
    Interrupted,
}

impl TaskStatus {
    /// Every status.
    pub const ALL: [TaskStatus; 7] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Finished,
        TaskStatus::Failed,
        TaskStatus::Timeout,
        TaskStatus::Cancelled,
        TaskStatus::Interrupted,
    ];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Finished => "finished",
            TaskStatus::Failed => "failed",
            TaskStatus::Timeout => "timeout",
            TaskStatus::Cancelled => "cancelled",
            TaskStatus::Interrupted => "interrupted",
        }
    }

    /// Parse a wire or database name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|v| v.as_str() == s)
    }

    /// Whether the task is over.
    pub fn is_final(self) -> bool {
        !matches!(self, TaskStatus::Queued | TaskStatus::Running)
    }
}

/// A task row.
#[derive(Debug, Clone)]
pub struct TaskRecord {
    pub id: String,
    pub server_id: String,
    pub command: String,
    pub timeout_secs: u32,
    pub store_output: bool,
    pub status: TaskStatus,
    pub cancel_requested: bool,
    /// Who asked for the cancel.
    pub cancelled_by: Option<String>,
    pub created_by: Option<String>,
    pub created_by_name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub exit_code: Option<i32>,
    pub stdout: Option<String>,
    pub stderr: Option<String>,
    pub output_truncated: bool,
    pub error: Option<String>,
}

/// Which tasks to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct TaskFilter {
    pub server_id: Option<String>,
    pub status: Option<TaskStatus>,
    /// Only tasks this user created.
    pub created_by: Option<String>,
    pub limit: u32,
    pub offset: u64,
}

/// Remote tasks.
#[async_trait]
pub trait TaskStore: Send + Sync {
    /// Insert tasks, each with its `task.created` event, in one transaction.
    async fn insert_tasks(&self, tasks: &[(TaskRecord, Event)]) -> Result<()>;
    /// One task.
    async fn task(&self, id: &str) -> Result<Option<TaskRecord>>;
    /// Tasks matching the filter, newest first, and how many match.
    async fn list_tasks(&self, filter: &TaskFilter) -> Result<(Vec<TaskRecord>, u64)>;
    /// A server's queued and running tasks, oldest first.
    async fn open_tasks(&self, server_id: &str) -> Result<Vec<TaskRecord>>;
    /// Servers with queued or running tasks.
    async fn servers_with_open_tasks(&self) -> Result<Vec<String>>;
    /// Running tasks started before `started_before`, oldest first.
    async fn running_tasks_started_before(
        &self,
        started_before: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>>;
    /// Queued tasks created before `created_before`, oldest first.
    async fn queued_tasks_created_before(
        &self,
        created_before: DateTime<Utc>,
    ) -> Result<Vec<TaskRecord>>;
    /// Delete finished tasks created before `before`.
    async fn prune_tasks(&self, before: DateTime<Utc>) -> Result<u64>;
    /// Replace a task's state if it is still in `expected` status, with its event; false when
    /// another change came first.
    async fn transition_task(
        &self,
        task: &TaskRecord,
        expected: TaskStatus,
        event: Option<&Event>,
    ) -> Result<bool>;
}

/// An alert rule row; the alerts service validates and interprets the text fields.
#[derive(Debug, Clone, PartialEq)]
pub struct RuleRecord {
    pub id: String,
    pub name: String,
    pub metric: String,
    pub mount: Option<String>,
    pub comparison: String,
    pub threshold: f64,
    pub recovery_threshold: Option<f64>,
    pub for_secs: u32,
    pub severity: Severity,
    pub scope: String,
    pub scope_value: Option<String>,
    pub enabled: bool,
    /// Notification channels this rule's alerts go to; `None` means every channel subscribed
    /// to alert events.
    pub channels: Option<Vec<String>>,
    pub created_by: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

/// An alert a rule raised for a server.
#[derive(Debug, Clone)]
pub struct AlertRecord {
    pub id: String,
    pub rule_id: String,
    pub rule_name: String,
    pub server_id: String,
    pub server_name: Option<String>,
    pub metric: String,
    pub severity: Severity,
    /// `firing` or `resolved`.
    pub status: String,
    pub value: Option<f64>,
    pub threshold: f64,
    pub pending_since: DateTime<Utc>,
    pub fired_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub resolved_value: Option<f64>,
    /// Why it resolved: `recovered`, `rule deleted`, `rule disabled`, `server deleted`.
    pub resolution: Option<String>,
    pub acknowledged_by: Option<String>,
    pub acknowledged_at: Option<DateTime<Utc>>,
}

/// Which alerts to list, newest first.
#[derive(Debug, Clone, Default)]
pub struct AlertFilter {
    pub status: Option<String>,
    pub server_id: Option<String>,
    pub rule_id: Option<String>,
    pub severity: Option<Severity>,
    pub limit: u32,
    pub offset: u64,
}

/// Alert rules and alerts.
#[async_trait]
pub trait AlertStore: Send + Sync {
    /// Every rule, by name.
    async fn list_rules(&self) -> Result<Vec<RuleRecord>>;
    /// Insert a rule; `Conflict` when the name is taken.
    async fn insert_rule(&self, rule: &RuleRecord, event: &Event) -> Result<()>;
    /// Replace a rule; `NotFound`, or `Conflict` when the new name is taken.
    async fn update_rule(&self, rule: &RuleRecord, event: &Event) -> Result<()>;
    /// Delete a rule (its alerts stay as history); `NotFound` when it is gone.
    async fn delete_rule(&self, id: &str, event: &Event) -> Result<()>;
    /// Record a firing alert; false when one already fires for the rule and server.
    async fn insert_alert(&self, alert: &AlertRecord, event: &Event) -> Result<bool>;
    /// Resolve a firing alert; false when it was not firing.
    async fn resolve_alert(&self, alert: &AlertRecord, event: &Event) -> Result<bool>;
    /// Every firing alert.
    async fn firing_alerts(&self) -> Result<Vec<AlertRecord>>;
    /// Alerts matching the filter, newest first, and how many match.
    async fn list_alerts(&self, filter: &AlertFilter) -> Result<(Vec<AlertRecord>, u64)>;
    /// One alert.
    async fn alert(&self, id: &str) -> Result<Option<AlertRecord>>;
    /// Mark an alert acknowledged; false when it already was.
    async fn acknowledge_alert(
        &self,
        id: &str,
        by: &str,
        at: DateTime<Utc>,
        event: &Event,
    ) -> Result<bool>;
}

/// How much work is waiting.
#[derive(Debug, Clone, Copy, Default)]
pub struct QueueDepths {
    pub undispatched_events: u64,
    pub webhook_jobs: u64,
}

/// A whole backend.
#[async_trait]
pub trait Store:
    UserStore + TokenStore + EventStore + WebhookStore + FleetStore + TaskStore + AlertStore
{
    /// Prove the database answers a read and accepts a write.
    async fn check_ready(&self) -> Result<()>;
    /// The outbox and delivery queue sizes.
    async fn queue_depths(&self) -> Result<QueueDepths>;
    /// Close every connection, finishing in-flight statements.
    async fn close(&self);
    /// Take or renew the lease `name` for `holder` until `until`; true when `holder` has it
    /// (it was free, expired at `now`, or already `holder`'s).
    async fn try_lease(
        &self,
        name: &str,
        holder: &str,
        now: DateTime<Utc>,
        until: DateTime<Utc>,
    ) -> Result<bool>;
    /// Give the lease up if `holder` has it (a clean stop hands over at once).
    async fn release_lease(&self, name: &str, holder: &str) -> Result<()>;
}
