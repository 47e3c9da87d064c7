//! `/api/alerts`: alert rules (operators and admins write, everyone reads), alerts and their
//! acknowledgement.

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::alerts::{AlertList, AlertQuery, AlertView, RuleInput, RuleView};
use crate::api::extract::{ApiJson, ApiQuery, Authorized, need};
use crate::api::{ErrorBody, Success};
use crate::app::AppState;
use crate::error::Result;

/// Every alert rule.
#[derive(Serialize, ToSchema)]
pub struct RuleList {
    pub rules: Vec<RuleView>,
    pub count: usize,
}

/// A created rule.
#[derive(Serialize, ToSchema)]
pub struct RuleCreated {
    pub success: bool,
    pub rule_id: String,
    pub rule: RuleView,
}

/// List alert rules (the defaults included).
#[utoipa::path(get, path = "/api/alerts/rules", tag = "alerts",
    responses((status = 200, body = RuleList), (status = 401, body = ErrorBody)))]
pub async fn list_rules(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
) -> Result<Json<RuleList>> {
    let rules = state.alerts.rules().await;
    Ok(Json(RuleList {
        count: rules.len(),
        rules,
    }))
}

/// Create an alert rule: metric, comparison, threshold, optional recovery threshold
/// (hysteresis), duration (`for`), severity and scope (all servers, a tag, one server).
#[utoipa::path(post, path = "/api/alerts/rules", tag = "alerts", request_body = RuleInput,
    responses((status = 201, body = RuleCreated), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn create_rule(
    State(state): State<AppState>,
    caller: Authorized<need::ManageAlerts>,
    ApiJson(input): ApiJson<RuleInput>,
) -> Result<(StatusCode, Json<RuleCreated>)> {
    let rule = state.alerts.create(&caller.origin, input).await?;
    Ok((
        StatusCode::CREATED,
        Json(RuleCreated {
            success: true,
            rule_id: rule.id.clone(),
            rule,
        }),
    ))
}

/// One alert rule.
#[utoipa::path(get, path = "/api/alerts/rules/{id}", tag = "alerts", params(("id" = String, Path)),
    responses((status = 200, body = RuleView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_rule(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
    Path(id): Path<String>,
) -> Result<Json<RuleView>> {
    Ok(Json(state.alerts.rule(&id).await?))
}

/// Change an alert rule: absent fields stay. Disabling it resolves its firing alerts.
#[utoipa::path(put, path = "/api/alerts/rules/{id}", tag = "alerts", params(("id" = String, Path)), request_body = RuleInput,
    responses((status = 200, body = RuleView), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn update_rule(
    State(state): State<AppState>,
    caller: Authorized<need::ManageAlerts>,
    Path(id): Path<String>,
    ApiJson(input): ApiJson<RuleInput>,
) -> Result<Json<RuleView>> {
    Ok(Json(state.alerts.update(&caller.origin, &id, input).await?))
}

/// Delete an alert rule; its firing alerts resolve, its history stays.
#[utoipa::path(delete, path = "/api/alerts/rules/{id}", tag = "alerts", params(("id" = String, Path)),
    responses((status = 200, body = Success), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn delete_rule(
    State(state): State<AppState>,
    caller: Authorized<need::ManageAlerts>,
    Path(id): Path<String>,
) -> Result<Json<Success>> {
    state.alerts.delete(&caller.origin, &id).await?;
    Ok(Json(Success::OK))
}

/// Alerts, newest first: firing and history, with filters.
#[utoipa::path(get, path = "/api/alerts", tag = "alerts", params(AlertQuery),
    responses((status = 200, body = AlertList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
pub async fn list_alerts(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
    ApiQuery(query): ApiQuery<AlertQuery>,
) -> Result<Json<AlertList>> {
    Ok(Json(state.alerts.list(&query).await?))
}

/// One alert.
#[utoipa::path(get, path = "/api/alerts/{id}", tag = "alerts", params(("id" = String, Path)),
    responses((status = 200, body = AlertView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
pub async fn get_alert(
    State(state): State<AppState>,
    _caller: Authorized<need::ReadFleet>,
    Path(id): Path<String>,
) -> Result<Json<AlertView>> {
    Ok(Json(state.alerts.get(&id).await?))
}

/// Acknowledge an alert (someone is on it); repeating it changes nothing.
#[utoipa::path(post, path = "/api/alerts/{id}/acknowledge", tag = "alerts", params(("id" = String, Path)),
    responses((status = 200, body = AlertView), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn acknowledge_alert(
    State(state): State<AppState>,
    caller: Authorized<need::ManageAlerts>,
    Path(id): Path<String>,
) -> Result<Json<AlertView>> {
    Ok(Json(state.alerts.acknowledge(&caller.origin, &id).await?))
}
