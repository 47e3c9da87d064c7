//! Row mapping shared by both backends: how a database row becomes a record, written once.
//!
//! The backends differ in SQL, never in how they read a row: every column decodes to the same
//! Rust type on both (SQLite integers and PostgreSQL BIGINT to `i64`, SQLite 0/1 and BOOLEAN
//! to `bool`, REAL and DOUBLE PRECISION to `f64`, TEXT to `String`). [`RowRead`] names those
//! reads so the mappers below need not know which backend's row they hold.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{
    AlertRecord, ChannelFields, DeliveryRecord, HistoryPoint, JobRecord, RuleRecord, ServerMark,
    ServerRecord, ServerStatus, TaskRecord, TaskStatus, TokenKind, TokenRecord, UserRecord,
    WebhookRecord,
};
use crate::auth::roles::Role;
use crate::error::{Error, Result};
use crate::events::{Event, Severity};

/// The typed column reads the mappers need, by column name.
pub(crate) trait RowRead {
    fn string(&self, col: &str) -> Result<String>;
    fn opt_string(&self, col: &str) -> Result<Option<String>>;
    fn int(&self, col: &str) -> Result<i64>;
    fn opt_int(&self, col: &str) -> Result<Option<i64>>;
    /// SQLite keeps flags as integers, which sqlx decodes to `bool` as it does BOOLEAN.
    fn flag(&self, col: &str) -> Result<bool>;
    fn real(&self, col: &str) -> Result<f64>;
    fn opt_real(&self, col: &str) -> Result<Option<f64>>;

    /// A time, stored as milliseconds since the epoch.
    fn time(&self, col: &str) -> Result<DateTime<Utc>> {
        Ok(from_ms(self.int(col)?))
    }

    /// A time that may be unset, stored as milliseconds since the epoch.
    fn opt_time(&self, col: &str) -> Result<Option<DateTime<Utc>>> {
        Ok(self.opt_int(col)?.map(from_ms))
    }
}

/// The two impls are the same text over different row types.
macro_rules! impl_row_read {
    ($row:ty) => {
        impl RowRead for $row {
            fn string(&self, col: &str) -> Result<String> {
                Ok(Row::try_get(self, col)?)
            }
            fn opt_string(&self, col: &str) -> Result<Option<String>> {
                Ok(Row::try_get(self, col)?)
            }
            fn int(&self, col: &str) -> Result<i64> {
                Ok(Row::try_get(self, col)?)
            }
            fn opt_int(&self, col: &str) -> Result<Option<i64>> {
                Ok(Row::try_get(self, col)?)
            }
            fn flag(&self, col: &str) -> Result<bool> {
                Ok(Row::try_get(self, col)?)
            }
            fn real(&self, col: &str) -> Result<f64> {
                Ok(Row::try_get(self, col)?)
            }
            fn opt_real(&self, col: &str) -> Result<Option<f64>> {
                Ok(Row::try_get(self, col)?)
            }
        }
    };
}

impl_row_read!(sqlx::sqlite::SqliteRow);
impl_row_read!(sqlx::postgres::PgRow);

/// Times are stored as milliseconds since the epoch in both backends.
pub(crate) fn ms(t: DateTime<Utc>) -> i64 {
    t.timestamp_millis()
}

/// The inverse of [`ms`]; an out-of-range value (never written so) reads as the epoch.
pub(crate) fn from_ms(v: i64) -> DateTime<Utc> {
    DateTime::from_timestamp_millis(v).unwrap_or_default()
}

/// A stored value the hub cannot have written: an internal error, not the client's.
pub(crate) fn corrupt(what: &str, value: &str) -> Error {
    Error::Internal(anyhow::anyhow!("corrupt {what} in database: {value:?}"))
}

/// `Conflict` with `message` when `e` is a unique violation, else the database error.
pub(crate) fn conflict_if_taken(e: sqlx::Error, message: &str) -> Error {
    if is_unique_violation(&e) {
        Error::Conflict(message.into())
    } else {
        e.into()
    }
}

/// Whether `e` is a unique constraint violation, whichever the backend.
pub(crate) fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

pub(crate) fn user_from_row(row: &impl RowRead) -> Result<UserRecord> {
    let role = row.string("role")?;
    Ok(UserRecord {
        id: row.string("id")?,
        username: row.string("username")?,
        email: row.opt_string("email")?,
        role: Role::parse(&role).ok_or_else(|| corrupt("role", &role))?,
        enabled: row.flag("enabled")?,
        password_hash: row.string("password_hash")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        last_login_at: row.opt_time("last_login_at")?,
    })
}

pub(crate) fn token_from_row(row: &impl RowRead) -> Result<TokenRecord> {
    let kind = row.string("kind")?;
    Ok(TokenRecord {
        id: row.string("id")?,
        user_id: row.string("user_id")?,
        kind: match kind.as_str() {
            "session" => TokenKind::Session,
            "personal" => TokenKind::Personal,
            _ => return Err(corrupt("token kind", &kind)),
        },
        name: row.opt_string("name")?,
        token_hash: row.string("token_hash")?,
        created_at: row.time("created_at")?,
        last_used_at: row.time("last_used_at")?,
        expires_at: row.opt_time("expires_at")?,
    })
}

pub(crate) fn event_from_row(row: &impl RowRead) -> Result<Event> {
    let id = row.string("event_id")?;
    let meta = row.string("meta")?;
    let severity = row.string("severity")?;
    Ok(Event {
        event_id: id.parse().map_err(|_| corrupt("event id", &id))?,
        event_type: row.string("event_type")?,
        timestamp: row.time("ts")?,
        user_id: row.opt_string("user_id")?,
        username: row.opt_string("username")?,
        server_id: row.opt_string("server_id")?,
        server_name: row.opt_string("server_name")?,
        target_type: row.opt_string("target_type")?,
        target_id: row.opt_string("target_id")?,
        action: row.string("action")?,
        meta: serde_json::from_str(&meta).map_err(|_| corrupt("event meta", &meta))?,
        ip: row.opt_string("ip")?,
        user_agent: row.opt_string("user_agent")?,
        severity: Severity::parse(&severity).ok_or_else(|| corrupt("severity", &severity))?,
    })
}

pub(crate) fn server_from_row(row: &impl RowRead) -> Result<ServerRecord> {
    let tags = row.string("tags")?;
    let status = row.string("status")?;
    let opt_u32 = |col: &str| -> Result<Option<u32>> { Ok(row.opt_int(col)?.map(|v| v as u32)) };
    Ok(ServerRecord {
        seq: row.int("seq")?,
        id: row.string("id")?,
        name: row.string("name")?,
        description: row.opt_string("description")?,
        tags: serde_json::from_str(&tags).map_err(|_| corrupt("server tags", &tags))?,
        token_hash: row.string("token_hash")?,
        is_local: row.flag("is_local")?,
        interval_secs: opt_u32("interval_secs")?,
        status: ServerStatus::parse(&status).ok_or_else(|| corrupt("server status", &status))?,
        last_seen_at: row.opt_time("last_seen_at")?,
        agent_version: row.opt_string("agent_version")?,
        agent_interval_secs: opt_u32("agent_interval_secs")?,
        latest_sample: row.opt_string("latest_sample")?,
        created_by: row.opt_string("created_by")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// A row of `SELECT id, status, last_seen_at, updated_at FROM servers`.
pub(crate) fn server_mark_from_row(row: &impl RowRead) -> Result<ServerMark> {
    let status = row.string("status")?;
    Ok(ServerMark {
        id: row.string("id")?,
        status: ServerStatus::parse(&status).ok_or_else(|| corrupt("server status", &status))?,
        last_seen_at: row.opt_time("last_seen_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// A row of `SELECT received_at, changed_at, data FROM inventory`.
pub(crate) fn inventory_from_row(
    row: &impl RowRead,
) -> Result<(DateTime<Utc>, DateTime<Utc>, String)> {
    Ok((
        row.time("received_at")?,
        row.time("changed_at")?,
        row.string("data")?,
    ))
}

/// A row of the history queries, whose columns are aliased `t`, `mn`, `mx`, `av` and `la`
/// whichever the tier.
pub(crate) fn history_point_from_row(row: &impl RowRead) -> Result<HistoryPoint> {
    Ok(HistoryPoint {
        ts: row.time("t")?,
        min: row.real("mn")?,
        max: row.real("mx")?,
        avg: row.real("av")?,
        last: row.real("la")?,
    })
}

pub(crate) fn task_from_row(row: &impl RowRead) -> Result<TaskRecord> {
    let status = row.string("status")?;
    Ok(TaskRecord {
        id: row.string("id")?,
        server_id: row.string("server_id")?,
        command: row.string("command")?,
        timeout_secs: row.int("timeout_secs")? as u32,
        store_output: row.flag("store_output")?,
        status: TaskStatus::parse(&status).ok_or_else(|| corrupt("task status", &status))?,
        cancel_requested: row.flag("cancel_requested")?,
        cancelled_by: row.opt_string("cancelled_by")?,
        created_by: row.opt_string("created_by")?,
        created_by_name: row.opt_string("created_by_name")?,
        created_at: row.time("created_at")?,
        started_at: row.opt_time("started_at")?,
        finished_at: row.opt_time("finished_at")?,
        exit_code: row.opt_int("exit_code")?.map(|c| c as i32),
        stdout: row.opt_string("stdout")?,
        stderr: row.opt_string("stderr")?,
        output_truncated: row.flag("output_truncated")?,
        error: row.opt_string("error")?,
    })
}

fn severity(row: &impl RowRead) -> Result<Severity> {
    let s = row.string("severity")?;
    Severity::parse(&s).ok_or_else(|| corrupt("severity", &s))
}

pub(crate) fn rule_from_row(row: &impl RowRead) -> Result<RuleRecord> {
    Ok(RuleRecord {
        id: row.string("id")?,
        name: row.string("name")?,
        metric: row.string("metric")?,
        mount: row.opt_string("mount")?,
        comparison: row.string("comparison")?,
        threshold: row.real("threshold")?,
        recovery_threshold: row.opt_real("recovery_threshold")?,
        for_secs: row.int("for_secs")? as u32,
        severity: severity(row)?,
        scope: row.string("scope")?,
        scope_value: row.opt_string("scope_value")?,
        enabled: row.flag("enabled")?,
        channels: match row.opt_string("channels")? {
            None => None,
            Some(json) => {
                Some(serde_json::from_str(&json).map_err(|_| corrupt("rule channels", &json))?)
            }
        },
        created_by: row.opt_string("created_by")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
    })
}

/// A rule's channel list as stored: JSON, or NULL for "every channel".
pub(crate) fn channels_json(r: &RuleRecord) -> Option<String> {
    r.channels
        .as_ref()
        .map(|c| serde_json::to_string(c).expect("strings serialise"))
}

pub(crate) fn alert_from_row(row: &impl RowRead) -> Result<AlertRecord> {
    Ok(AlertRecord {
        id: row.string("id")?,
        rule_id: row.string("rule_id")?,
        rule_name: row.string("rule_name")?,
        server_id: row.string("server_id")?,
        server_name: row.opt_string("server_name")?,
        metric: row.string("metric")?,
        severity: severity(row)?,
        status: row.string("status")?,
        value: row.opt_real("value")?,
        threshold: row.real("threshold")?,
        pending_since: row.time("pending_since")?,
        fired_at: row.time("fired_at")?,
        resolved_at: row.opt_time("resolved_at")?,
        resolved_value: row.opt_real("resolved_value")?,
        resolution: row.opt_string("resolution")?,
        acknowledged_by: row.opt_string("acknowledged_by")?,
        acknowledged_at: row.opt_time("acknowledged_at")?,
    })
}

pub(crate) fn webhook_from_row(row: &impl RowRead) -> Result<WebhookRecord> {
    let types = row.opt_string("event_types")?;
    let event_types = types
        .map(|t| serde_json::from_str::<Vec<String>>(&t).map_err(|_| corrupt("event_types", &t)))
        .transpose()?;
    Ok(WebhookRecord {
        id: row.string("id")?,
        name: row.string("name")?,
        url: row.string("url")?,
        secret: row.opt_string("secret")?,
        previous_secret: row.opt_string("previous_secret")?,
        previous_secret_expires_at: row.opt_time("previous_secret_expires_at")?,
        enabled: row.flag("enabled")?,
        event_types,
        retry_max: row.int("retry_max")? as u32,
        timeout_secs: row.int("timeout")? as u32,
        created_by: row.opt_string("created_by")?,
        created_at: row.time("created_at")?,
        updated_at: row.time("updated_at")?,
        last_triggered_at: row.opt_time("last_triggered_at")?,
        failing_since: row.opt_time("failing_since")?,
        disabled_reason: row.opt_string("disabled_reason")?,
        channel: match row.opt_string("channel_kind")? {
            None => None,
            Some(kind) => Some(ChannelFields {
                kind,
                config: row.opt_string("channel_config")?.unwrap_or_default(),
                routing: row
                    .opt_string("channel_routing")?
                    .unwrap_or_else(|| "{}".into()),
            }),
        },
    })
}

/// A webhook's event type filter as stored: JSON, or NULL for "every type".
pub(crate) fn types_json(types: &Option<Vec<String>>) -> Option<String> {
    types
        .as_ref()
        .map(|t| serde_json::to_string(t).expect("strings serialise"))
}

pub(crate) fn job_from_row(row: &impl RowRead) -> Result<JobRecord> {
    Ok(JobRecord {
        id: row.string("id")?,
        webhook_id: row.string("webhook_id")?,
        event_id: row.string("event_id")?,
        event_type: row.string("event_type")?,
        payload: row.string("payload")?,
        attempt: row.int("attempt")? as u32,
        next_attempt_at: row.time("next_attempt_at")?,
    })
}

pub(crate) fn delivery_from_row(row: &impl RowRead) -> Result<DeliveryRecord> {
    let status = row.string("status")?;
    Ok(DeliveryRecord {
        id: row.string("id")?,
        webhook_id: row.string("webhook_id")?,
        event_id: row.string("event_id")?,
        event_type: row.string("event_type")?,
        status: match status.as_str() {
            "success" => "success",
            "failed" => "failed",
            "retrying" => "retrying",
            _ => return Err(corrupt("delivery status", &status)),
        },
        status_code: row.opt_int("status_code")?.map(|c| c as u16),
        response_body: row.opt_string("response_body")?,
        error: row.opt_string("error")?,
        attempt: row.int("attempt")? as u32,
        delivered_at: row.time("delivered_at")?,
        duration_ms: row.int("duration_ms")? as u64,
    })
}
