//! `/api/notifications/channels`: notification channels (admins).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::api::extract::{ApiJson, ApiQuery, Authorized, need};
use crate::api::ratelimit::Allowance;
use crate::api::webhooks::{DeliveryPage, DeliveryQuery};
use crate::api::{ErrorBody, Success};
use crate::app::AppState;
use crate::error::Result;
use crate::notifications::service::{ChannelPatch, ChannelView, NewChannel};
use crate::webhooks::service::{DeliveryView, TestOutcome};

/// Every channel (settings without secrets).
#[derive(Serialize, ToSchema)]
pub struct ChannelList {
    pub channels: Vec<ChannelView>,
    pub count: usize,
}

/// A created channel.
#[derive(Serialize, ToSchema)]
pub struct ChannelCreated {
    pub success: bool,
    pub channel_id: String,
    pub channel: ChannelView,
}

/// A changed channel.
#[derive(Serialize, ToSchema)]
pub struct ChannelUpdated {
    pub success: bool,
    pub channel: ChannelView,
}

/// List notification channels.
#[utoipa::path(get, path = "/api/notifications/channels", tag = "notifications",
    responses((status = 200, body = ChannelList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_channels(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageNotifications>,
) -> Result<Json<ChannelList>> {
    let mut channels = Vec::new();
    for c in state.notifications.list().await? {
        channels.push(state.notifications.view(c).await?);
    }
    Ok(Json(ChannelList {
        count: channels.len(),
        channels,
    }))
}

/// Create a channel: `kind` and its `config` (docs/NOTIFICATIONS.md), routing and pacing.
/// Limited per user like webhook creation (`rate_limits.webhook_create_per_minute`).
#[utoipa::path(post, path = "/api/notifications/channels", tag = "notifications", request_body = NewChannel,
    responses((status = 201, body = ChannelCreated), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_channel(
    State(state): State<AppState>,
    caller: Authorized<need::ManageNotifications>,
    ApiJson(new): ApiJson<NewChannel>,
) -> Result<(StatusCode, Allowance, Json<ChannelCreated>)> {
    let allowance = state.limits.webhook_create.check(&caller.user_id)?;
    let channel = state.notifications.create(&caller.origin, new).await?;
    let view = state.notifications.view(channel).await?;
    Ok((
        StatusCode::CREATED,
        allowance,
        Json(ChannelCreated {
            success: true,
            channel_id: view.id.clone(),
            channel: view,
        }),
    ))
}

/// One channel.
#[utoipa::path(get, path = "/api/notifications/channels/{id}", tag = "notifications",
    params(("id" = String, Path)),
    responses((status = 200, body = ChannelView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_channel(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageNotifications>,
    Path(id): Path<String>,
) -> Result<Json<ChannelView>> {
    let channel = state.notifications.get(&id).await?;
    Ok(Json(state.notifications.view(channel).await?))
}

/// Change a channel. Partial: absent fields stay; in `config`, secret settings left out keep
/// their stored values; `"enabled": true` re-enables a channel the hub disabled.
#[utoipa::path(put, path = "/api/notifications/channels/{id}", tag = "notifications",
    params(("id" = String, Path)), request_body = ChannelPatch,
    responses((status = 200, body = ChannelUpdated), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_channel(
    State(state): State<AppState>,
    caller: Authorized<need::ManageNotifications>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<ChannelPatch>,
) -> Result<Json<ChannelUpdated>> {
    let channel = state
        .notifications
        .update(&caller.origin, &id, patch)
        .await?;
    Ok(Json(ChannelUpdated {
        success: true,
        channel: state.notifications.view(channel).await?,
    }))
}

/// Delete a channel with its queued messages and its delivery log (409 while an alert rule
/// names it).
#[utoipa::path(delete, path = "/api/notifications/channels/{id}", tag = "notifications",
    params(("id" = String, Path)),
    responses((status = 200, body = Success), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn delete_channel(
    State(state): State<AppState>,
    caller: Authorized<need::ManageNotifications>,
    Path(id): Path<String>,
) -> Result<Json<Success>> {
    state.notifications.delete(&caller.origin, &id).await?;
    Ok(Json(Success::OK))
}

/// Send a test message to this channel only, now, and answer with the real outcome
/// (`success` is false when the service refused it or could not be reached). Limited per user
/// (`rate_limits.webhook_test_per_minute`).
#[utoipa::path(post, path = "/api/notifications/channels/{id}/test", tag = "notifications",
    params(("id" = String, Path)),
    responses((status = 200, body = TestOutcome), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn test_channel(
    State(state): State<AppState>,
    caller: Authorized<need::ManageNotifications>,
    Path(id): Path<String>,
) -> Result<(Allowance, Json<TestOutcome>)> {
    let allowance = state.limits.webhook_test.check(&caller.user_id)?;
    Ok((
        allowance,
        Json(state.notifications.test(&caller.origin, &id).await?),
    ))
}

/// Every attempt to send this channel's messages, newest first (`event_id` is the first
/// event of a grouped message).
#[utoipa::path(get, path = "/api/notifications/channels/{id}/deliveries", tag = "notifications",
    params(("id" = String, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_channel_deliveries(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageNotifications>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<DeliveryPage>> {
    let (limit, offset) = (q.limit.unwrap_or(50), q.offset.unwrap_or(0));
    let (rows, total) = state
        .notifications
        .deliveries(&id, q.status.as_deref(), limit, offset)
        .await?;
    let deliveries: Vec<DeliveryView> = rows.into_iter().map(Into::into).collect();
    Ok(Json(DeliveryPage {
        count: deliveries.len(),
        deliveries,
        total,
        limit,
        offset,
    }))
}
