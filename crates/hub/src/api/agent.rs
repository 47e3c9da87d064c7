//! `/api/agent/v1`: the agent protocol (docs/AGENT_PROTOCOL.md). Authenticated by agent
//! tokens, not user sessions.

use axum::Json;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use smon_proto::{
    EnrollRequest, EnrollResponse, MAX_REPORT_BYTES, Report, ReportResponse, TaskUpdate,
};

use crate::api::ErrorBody;
use crate::api::extract::{ApiJson, ClientOrigin, parse_json};
use crate::app::AppState;
use crate::error::{Error, Result};

/// Largest task update body.
const MAX_TASK_UPDATE_BYTES: usize = 1024 * 1024;

fn agent_token(headers: &HeaderMap) -> Result<&str> {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split_once(' '))
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .ok_or_else(|| {
            Error::Unauthorized("send the agent token as Authorization: Bearer <token>".into())
        })
}

/// The body as JSON, within the protocol's size limit (read only after the token checked out).
async fn read_json<T: serde::de::DeserializeOwned>(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
) -> Result<T> {
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .map(|m| m.trim().to_ascii_lowercase())
                .is_some_and(|m| m == "application/json" || m.ends_with("+json"))
        });
    if !is_json {
        return Err(Error::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, limit)
        .await
        .map_err(|_| Error::PayloadTooLarge { limit })?;
    parse_json(&bytes)
}

/// An agent's report: samples (one, or many when backfilling) and, when it changed, the
/// inventory. Bodies over 256 KiB, malformed JSON and impossible values are refused whole.
#[utoipa::path(post, path = "/api/agent/v1/report", tag = "agent", request_body = Report,
    security(("bearer" = [])),
    responses((status = 200, body = ReportResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 503, body = ErrorBody)))]
pub async fn report(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Body,
) -> Result<Json<ReportResponse>> {
    // The token first: an unknown agent learns nothing about what it sent.
    let server_id = state.fleet.authenticate_agent(agent_token(&headers)?)?;
    let report: Report = read_json(&headers, body, MAX_REPORT_BYTES).await?;
    let mut answer = state.fleet.ingest(&server_id, report).await?;
    // The samples are stored: a failed task lookup must not make the agent send them again.
    if let Err(e) = state.tasks.attach(&server_id, &mut answer).await {
        tracing::warn!(error = %e, server = %server_id, "cannot hand tasks to an agent");
    }
    Ok(Json(answer))
}

/// An agent's word on a task: it started, or it ended (with exit code and bounded output).
/// Repeats are accepted and change nothing, so agents can retry freely.
#[utoipa::path(post, path = "/api/agent/v1/tasks/{id}/result", tag = "agent", params(("id" = String, Path)),
    request_body = TaskUpdate, security(("bearer" = [])),
    responses((status = 200, body = crate::api::Success), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
pub async fn task_result(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(id): Path<String>,
    body: Body,
) -> Result<Json<crate::api::Success>> {
    let server_id = state.fleet.authenticate_agent(agent_token(&headers)?)?;
    // Two 64 KiB streams can take six times that once escaped as JSON (NUL bytes, say).
    let update: TaskUpdate = read_json(&headers, body, MAX_TASK_UPDATE_BYTES).await?;
    state.tasks.agent_update(&server_id, &id, update).await?;
    Ok(Json(crate::api::Success::OK))
}

/// Register a server with the hub's enrollment token; the answer holds its agent token.
#[utoipa::path(post, path = "/api/agent/v1/enroll", tag = "agent", request_body = EnrollRequest, security(()),
    responses((status = 201, body = EnrollResponse), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody)))]
pub async fn enroll(
    State(state): State<AppState>,
    ClientOrigin(origin): ClientOrigin,
    ApiJson(request): ApiJson<EnrollRequest>,
) -> Result<(StatusCode, Json<EnrollResponse>)> {
    Ok((
        StatusCode::CREATED,
        Json(state.fleet.enroll(&origin, request).await?),
    ))
}
