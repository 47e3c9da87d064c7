//! `/api/servers` and `/api/stats/overview`: the fleet (every role reads; operators and admins
//! write).

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::Response;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::extract::{ApiJson, ApiQuery, Authorized, need};
use crate::api::ratelimit::Allowance;
use crate::api::{ErrorBody, Success, json_bytes};
use crate::app::AppState;
use crate::error::Result;
use crate::fleet::{
    HistoryView, InventoryView, NewServer, Overview, ServerDetail, ServerPage, ServerPatch,
    ServerQuery, ServerView, agent_command,
};

/// A created server with its agent token, shown this once.
#[derive(Serialize, ToSchema)]
pub struct ServerCreated {
    pub success: bool,
    pub server_id: String,
    pub server: ServerView,
    /// The agent token: shown only in this answer (the hub keeps a hash).
    pub agent_token: String,
    /// The command that starts the agent on the server.
    pub agent_command: String,
}

/// A new agent token, shown this once.
#[derive(Serialize, ToSchema)]
pub struct TokenRotated {
    pub success: bool,
    pub agent_token: String,
    pub agent_command: String,
}

/// An updated server.
#[derive(Serialize, ToSchema)]
pub struct ServerUpdated {
    pub success: bool,
    pub server: ServerView,
}

/// Which history to read.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// cpu, memory, swap, disk, load1, load5, load15, net_rx, net_tx, disk_read, disk_write or
    /// temperature.
    pub metric: String,
    /// RFC 3339; default one hour before `to`.
    pub from: Option<DateTime<Utc>>,
    /// RFC 3339; default now.
    pub to: Option<DateTime<Utc>>,
    /// `raw`, `1m` or `1h`; default: the finest tier that covers the range.
    pub tier: Option<String>,
}

/// The hub's URL as agents should reach it: `public_url`, else the Host this request came to.
pub fn hub_url(state: &AppState, headers: &HeaderMap) -> String {
    if !state.config.public_url.is_empty() {
        return state.config.public_url.trim_end_matches('/').to_string();
    }
    let host = headers
        .get(header::HOST)
        .and_then(|h| h.to_str().ok())
        // The URL goes into a shell command operators paste: host[:port] characters only.
        .filter(|h| {
            !h.is_empty()
                && h.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | ':' | '[' | ']'))
        })
        .unwrap_or(&state.config.listen);
    format!("http://{host}")
}

/// List servers with their latest metrics: filters, sorting and paging, served from memory.
#[utoipa::path(get, path = "/api/servers", tag = "servers", params(ServerQuery),
    responses((status = 200, body = ServerPage), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_servers(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
    RawQuery(raw): RawQuery,
    ApiQuery(query): ApiQuery<ServerQuery>,
) -> Result<Response> {
    // The generation first: an answer computed from an older fleet is never filed under a
    // newer one.
    let key = format!("{}|{}", state.fleet.generation(), raw.unwrap_or_default());
    let body = state
        .caches
        .servers
        .get_or_compute(key, || async {
            crate::cache::json(&state.fleet.list(&query)?)
        })
        .await?;
    Ok(json_bytes(body))
}

/// Create a server. The answer holds its agent token (shown once) and the agent command.
#[utoipa::path(post, path = "/api/servers", tag = "servers", request_body = NewServer,
    responses((status = 201, body = ServerCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_server(
    State(state): State<AppState>,
    caller: Authorized<need::ManageServers>,
    headers: HeaderMap,
    ApiJson(new): ApiJson<NewServer>,
) -> Result<(StatusCode, Json<ServerCreated>)> {
    let (server, agent_token) = state.fleet.create(&caller.origin, new).await?;
    Ok((
        StatusCode::CREATED,
        Json(ServerCreated {
            success: true,
            server_id: server.id.clone(),
            server,
            agent_command: agent_command(&hub_url(&state, &headers), &agent_token),
            agent_token,
        }),
    ))
}

/// One server with its full latest sample.
#[utoipa::path(get, path = "/api/servers/{id}", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = ServerDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_server(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
    Path(id): Path<String>,
) -> Result<Json<ServerDetail>> {
    Ok(Json(state.fleet.get(&id)?))
}

/// Change a server: absent fields stay; `null` clears `description` or `interval_secs`.
#[utoipa::path(put, path = "/api/servers/{id}", tag = "servers", params(("id" = String, Path)), request_body = ServerPatch,
    responses((status = 200, body = ServerUpdated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_server(
    State(state): State<AppState>,
    caller: Authorized<need::ManageServers>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ServerPatch>,
) -> Result<Json<ServerUpdated>> {
    let server = state.fleet.update(&caller.origin, &id, patch).await?;
    Ok(Json(ServerUpdated {
        success: true,
        server,
    }))
}

/// Delete a server with its history and inventory; its agent token stops working.
#[utoipa::path(delete, path = "/api/servers/{id}", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = Success), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_server(
    State(state): State<AppState>,
    caller: Authorized<need::ManageServers>,
    Path(id): Path<String>,
) -> Result<Json<Success>> {
    state.fleet.delete(&caller.origin, &id).await?;
    Ok(Json(Success::OK))
}

/// Give the server a new agent token (shown once); the old one stops working at once.
#[utoipa::path(post, path = "/api/servers/{id}/token", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = TokenRotated), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn rotate_token(
    State(state): State<AppState>,
    caller: Authorized<need::ManageServers>,
    headers: HeaderMap,
    Path(id): Path<String>,
) -> Result<Json<TokenRotated>> {
    let agent_token = state.fleet.rotate_token(&caller.origin, &id).await?;
    Ok(Json(TokenRotated {
        success: true,
        agent_command: agent_command(&hub_url(&state, &headers), &agent_token),
        agent_token,
    }))
}

/// A metric's history. The tier (raw, 1-minute or 1-hour rollups) follows the range unless
/// `tier` is given; every point has min, max, avg and last (equal for raw points).
#[utoipa::path(get, path = "/api/servers/{id}/metrics", tag = "servers", params(("id" = String, Path), HistoryQuery),
    responses((status = 200, body = HistoryView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn server_metrics(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<HistoryQuery>,
) -> Result<Json<HistoryView>> {
    let history = state
        .fleet
        .history(&id, &q.metric, q.from, q.to, q.tier.as_deref())
        .await?;
    Ok(Json(history))
}

/// The inventory the agent last sent.
#[utoipa::path(get, path = "/api/servers/{id}/inventory/latest", tag = "servers", params(("id" = String, Path)),
    responses((status = 200, body = InventoryView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn latest_inventory(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
    Path(id): Path<String>,
) -> Result<Json<InventoryView>> {
    Ok(Json(state.fleet.inventory(&id).await?))
}

/// Ask the agent to send its inventory with its next report. Limited per server
/// (`rate_limits.inventory_refresh_per_minute`).
#[utoipa::path(post, path = "/api/servers/{id}/inventory/refresh", tag = "servers", params(("id" = String, Path)),
    responses((status = 202, body = Success), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn refresh_inventory(
    State(state): State<AppState>,
    caller: Authorized<need::ManageServers>,
    Path(id): Path<String>,
) -> Result<(StatusCode, Allowance, Json<Success>)> {
    state.fleet.exists(&id)?;
    let allowance = state.limits.inventory_refresh.check(&id)?;
    state.fleet.request_inventory(&caller.origin, &id).await?;
    Ok((StatusCode::ACCEPTED, allowance, Json(Success::OK)))
}

/// Fleet-wide counts and averages.
#[utoipa::path(get, path = "/api/stats/overview", tag = "servers",
    responses((status = 200, body = Overview), (status = 401, body = ErrorBody)))]
pub async fn overview(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
) -> Result<Response> {
    Ok(json_bytes(overview_json(&state).await?))
}

/// The fleet overview as JSON, from the cache (the web UI's pages read it too).
pub async fn overview_json(state: &AppState) -> Result<axum::body::Bytes> {
    let key = state.fleet.generation().to_string();
    state
        .caches
        .overview
        .get_or_compute(key, || async {
            crate::cache::json(&state.fleet.overview())
        })
        .await
}
