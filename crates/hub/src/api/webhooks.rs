//! `/api/webhooks`: managed webhooks (admins).

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};

use crate::api::extract::{ApiJson, ApiQuery, Authorized, OptionalJson, need};
use crate::api::ratelimit::Allowance;
use crate::api::{ErrorBody, Success};
use crate::app::AppState;
use crate::error::Result;
use crate::webhooks::service::{DeliveryView, NewWebhook, TestOutcome, WebhookPatch, WebhookView};
use crate::wire::opt_rfc3339_millis;

/// Every webhook (secrets only as hints).
#[derive(Serialize, ToSchema)]
pub struct WebhookList {
    pub webhooks: Vec<WebhookView>,
    pub count: usize,
}

/// A created webhook.
#[derive(Serialize, ToSchema)]
pub struct WebhookCreated {
    pub success: bool,
    pub webhook_id: String,
    pub webhook: WebhookView,
    /// The generated secret, shown this once (only with `generate_secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// An updated webhook.
#[derive(Serialize, ToSchema)]
pub struct WebhookUpdated {
    pub success: bool,
    pub webhook: WebhookView,
    /// The generated secret, shown this once (only with `generate_secret`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub secret: Option<String>,
}

/// List managed webhooks.
#[utoipa::path(get, path = "/api/webhooks", tag = "webhooks",
    responses((status = 200, body = WebhookList), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
pub async fn list_webhooks(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageWebhooks>,
) -> Result<Json<WebhookList>> {
    let mut webhooks = Vec::new();
    for w in state.webhooks.list().await? {
        webhooks.push(state.webhooks.view(w).await?);
    }
    Ok(Json(WebhookList {
        count: webhooks.len(),
        webhooks,
    }))
}

/// Create a webhook. `"generate_secret": true` has the hub make a `whsec_` secret, returned once.
/// Limited per user (`rate_limits.webhook_create_per_minute`).
#[utoipa::path(post, path = "/api/webhooks", tag = "webhooks", request_body = NewWebhook,
    responses((status = 201, body = WebhookCreated), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn create_webhook(
    State(state): State<AppState>,
    caller: Authorized<need::ManageWebhooks>,
    ApiJson(new): ApiJson<NewWebhook>,
) -> Result<(StatusCode, Allowance, Json<WebhookCreated>)> {
    let allowance = state.limits.webhook_create.check(&caller.user_id)?;
    let (webhook, secret) = state.webhooks.create(&caller.origin, new).await?;
    let view = state.webhooks.view(webhook).await?;
    Ok((
        StatusCode::CREATED,
        allowance,
        Json(WebhookCreated {
            success: true,
            webhook_id: view.id.clone(),
            webhook: view,
            secret,
        }),
    ))
}

/// One webhook.
#[utoipa::path(get, path = "/api/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = WebhookView), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_webhook(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageWebhooks>,
    Path(id): Path<String>,
) -> Result<Json<WebhookView>> {
    let webhook = state.webhooks.get(&id).await?;
    Ok(Json(state.webhooks.view(webhook).await?))
}

/// Change a webhook. Partial: absent fields stay; `"secret": ""` clears the secret;
/// `"enabled": true` re-enables a webhook the hub disabled.
#[utoipa::path(put, path = "/api/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    request_body = WebhookPatch,
    responses((status = 200, body = WebhookUpdated), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn update_webhook(
    State(state): State<AppState>,
    caller: Authorized<need::ManageWebhooks>,
    Path(id): Path<String>,
    ApiJson(patch): ApiJson<WebhookPatch>,
) -> Result<Json<WebhookUpdated>> {
    let (webhook, secret) = state.webhooks.update(&caller.origin, &id, patch).await?;
    let view = state.webhooks.view(webhook).await?;
    Ok(Json(WebhookUpdated {
        success: true,
        webhook: view,
        secret,
    }))
}

/// Delete a webhook with its pending deliveries and its delivery log.
#[utoipa::path(delete, path = "/api/webhooks/{id}", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = Success), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn delete_webhook(
    State(state): State<AppState>,
    caller: Authorized<need::ManageWebhooks>,
    Path(id): Path<String>,
) -> Result<Json<Success>> {
    state.webhooks.delete(&caller.origin, &id).await?;
    Ok(Json(Success::OK))
}

/// Deliver a `webhook.test` event to this webhook only, now, and answer with the real outcome
/// (`success` is false when the receiver failed). Limited per user
/// (`rate_limits.webhook_test_per_minute`).
#[utoipa::path(post, path = "/api/webhooks/{id}/test", tag = "webhooks", params(("id" = String, Path)),
    responses((status = 200, body = TestOutcome), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 429, body = ErrorBody)))]
pub async fn test_webhook(
    State(state): State<AppState>,
    caller: Authorized<need::ManageWebhooks>,
    Path(id): Path<String>,
) -> Result<(Allowance, Json<TestOutcome>)> {
    let allowance = state.limits.webhook_test.check(&caller.user_id)?;
    Ok((
        allowance,
        Json(state.webhooks.test(&caller.origin, &id).await?),
    ))
}

/// How long the replaced secret keeps signing.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateRequest {
    /// 0 (default) to 604800 seconds; during it deliveries carry both signatures.
    #[serde(default)]
    pub grace_period_seconds: u64,
}

/// The new secret, shown this once.
#[derive(Serialize, ToSchema)]
pub struct RotatedSecret {
    pub success: bool,
    pub secret: String,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub previous_secret_expires_at: Option<DateTime<Utc>>,
}

/// Replace the signing secret with a generated one (the body may be omitted).
#[utoipa::path(post, path = "/api/webhooks/{id}/secret/rotate", tag = "webhooks",
    params(("id" = String, Path)), request_body = RotateRequest,
    responses((status = 200, body = RotatedSecret), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn rotate_secret(
    State(state): State<AppState>,
    caller: Authorized<need::ManageWebhooks>,
    Path(id): Path<String>,
    OptionalJson(req): OptionalJson<RotateRequest>,
) -> Result<Json<RotatedSecret>> {
    let (webhook, secret) = state
        .webhooks
        .rotate_secret(&caller.origin, &id, req.grace_period_seconds)
        .await?;
    Ok(Json(RotatedSecret {
        success: true,
        secret,
        previous_secret_expires_at: webhook.previous_secret_expires_at,
    }))
}

/// Paging and filter of the delivery log.
#[derive(Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeliveryQuery {
    /// 1-1000 (default 50).
    pub limit: Option<u32>,
    pub offset: Option<u64>,
    /// `success`, `failed` or `retrying`.
    pub status: Option<String>,
}

/// A page of the delivery log, newest first.
#[derive(Serialize, ToSchema)]
pub struct DeliveryPage {
    pub deliveries: Vec<DeliveryView>,
    pub count: usize,
    pub total: u64,
    pub limit: u32,
    pub offset: u64,
}

/// Every attempt, newest first.
#[utoipa::path(get, path = "/api/webhooks/{id}/deliveries", tag = "webhooks",
    params(("id" = String, Path), DeliveryQuery),
    responses((status = 200, body = DeliveryPage), (status = 400, body = ErrorBody),
        (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn list_deliveries(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageWebhooks>,
    Path(id): Path<String>,
    ApiQuery(q): ApiQuery<DeliveryQuery>,
) -> Result<Json<DeliveryPage>> {
    let (limit, offset) = (q.limit.unwrap_or(50), q.offset.unwrap_or(0));
    let (rows, total) = state
        .webhooks
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

/// A queued redelivery.
#[derive(Serialize, ToSchema)]
pub struct Redelivery {
    pub success: bool,
    pub job_id: String,
}

/// Queue the event of a logged delivery again, with the same event id (409 while it is
/// still queued).
#[utoipa::path(post, path = "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver", tag = "webhooks",
    params(("id" = String, Path), ("delivery_id" = String, Path)),
    responses((status = 202, body = Redelivery), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn redeliver(
    State(state): State<AppState>,
    _caller: Authorized<need::ManageWebhooks>,
    Path((id, delivery_id)): Path<(String, String)>,
) -> Result<(StatusCode, Json<Redelivery>)> {
    let job_id = state.webhooks.redeliver(&id, &delivery_id).await?;
    Ok((
        StatusCode::ACCEPTED,
        Json(Redelivery {
            success: true,
            job_id,
        }),
    ))
}
