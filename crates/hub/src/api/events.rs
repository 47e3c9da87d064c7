//! The event log: `/api/audit-logs`, `/api/activity/recent`, `/api/events/types`.

use axum::Json;
use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::ErrorBody;
use crate::api::extract::{ApiQuery, Authorized, need};
use crate::app::AppState;
use crate::auth::roles::Permission;
use crate::error::{Error, Result};
use crate::events::{self, Event, EventFilter, EventTypeInfo, Severity};

/// Filters of the audit log; all optional.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct AuditQuery {
    /// Only events caused by this user id.
    pub user_id: Option<String>,
    /// Only events caused by (or, for failed logins, naming) this username.
    pub username: Option<String>,
    /// Only this event type (see `/api/events/types`).
    pub event_type: Option<String>,
    /// Only events about this kind of object (`user`, `token`, …).
    pub target_type: Option<String>,
    /// Only events about this object id.
    pub target_id: Option<String>,
    /// Only events about this server.
    pub server_id: Option<String>,
    pub severity: Option<Severity>,
    /// Only events at or after this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub since: Option<DateTime<Utc>>,
    /// Only events at or before this time (RFC 3339).
    #[param(value_type = Option<String>, format = DateTime)]
    pub until: Option<DateTime<Utc>>,
    /// Page size, 1-1000 (default 100).
    pub limit: Option<u32>,
    /// Events to skip (default 0).
    pub offset: Option<u64>,
}

/// A page of the audit log, newest first.
#[derive(Serialize, ToSchema)]
pub struct AuditPage {
    pub logs: Vec<Event>,
    /// Events in this page.
    pub count: usize,
    /// Events matching the filters in all.
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// The audit log with filters (admins and auditors).
#[utoipa::path(get, path = "/api/audit-logs", tag = "events", params(AuditQuery),
    responses((status = 200, body = AuditPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn audit_logs(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadAuditLog>,
    ApiQuery(q): ApiQuery<AuditQuery>,
) -> Result<Json<AuditPage>> {
    let filter = EventFilter {
        user_id: q.user_id,
        username: q.username.map(|u| crate::users::normalize_username(&u)),
        event_type: q.event_type,
        target_type: q.target_type,
        target_id: q.target_id,
        server_id: q.server_id,
        severity: q.severity,
        since: q.since,
        until: q.until,
        limit: q.limit.unwrap_or(100),
        offset: q.offset.unwrap_or(0),
    };
    let (logs, total) = state.events.query(&filter).await?;
    Ok(Json(AuditPage {
        count: logs.len(),
        logs,
        total,
        limit: filter.limit,
        offset: filter.offset,
    }))
}

/// Page size of recent activity.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct RecentQuery {
    /// How many events, 1-100 (default 20).
    pub limit: Option<u32>,
}

/// The latest events.
#[derive(Serialize, ToSchema)]
pub struct RecentActivity {
    pub activities: Vec<Event>,
    pub count: usize,
}

/// The most recent events, for the dashboard (every role; client addresses and user agents
/// only for roles that may read the audit log).
#[utoipa::path(get, path = "/api/activity/recent", tag = "events", params(RecentQuery),
    responses((status = 200, body = RecentActivity), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody)))]
pub async fn recent_activity(
    State(state): State<AppState>,
    caller: Authorized<need::ReadDashboard>,
    ApiQuery(q): ApiQuery<RecentQuery>,
) -> Result<axum::response::Response> {
    let limit = q.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(Error::invalid("limit", "must be between 1 and 100"));
    }
    let client_details = caller.role.allows(Permission::ReadAuditLog);
    let key = format!("{}|{client_details}|{limit}", state.events.generation());
    let body = state
        .caches
        .activity
        .get_or_compute(key, || async {
            let activities = state.events.recent(limit, client_details).await?;
            crate::cache::json(&RecentActivity {
                count: activities.len(),
                activities,
            })
        })
        .await?;
    Ok(crate::api::json_bytes(body))
}

/// The event catalog.
#[derive(Serialize, ToSchema)]
pub struct EventTypes {
    pub event_types: Vec<EventTypeInfo>,
    pub count: usize,
}

/// Every event type the hub emits, with its default severity and meaning.
#[utoipa::path(get, path = "/api/events/types", tag = "events",
    responses((status = 200, body = EventTypes), (status = 401, body = ErrorBody)))]
pub async fn event_types(_caller: Authorized<need::ReadDashboard>) -> Result<Json<EventTypes>> {
    let event_types = events::catalog::catalog();
    Ok(Json(EventTypes {
        count: event_types.len(),
        event_types,
    }))
}
