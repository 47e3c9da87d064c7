//! `/api/agent/v1`: the agent protocol (docs/AGENT_PROTOCOL.md). Authenticated by agent
//! tokens, not user sessions.

use axum::Json;
use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use smon_proto::{EnrollRequest, EnrollResponse, MAX_REPORT_BYTES, Report, ReportResponse};

use crate::api::ErrorBody;
use crate::api::extract::{ApiJson, ClientOrigin, parse_json};
use crate::app::AppState;
use crate::error::{Error, Result};

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
    let is_json = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.split(';')
                .next()
                .is_some_and(|m| m.trim().eq_ignore_ascii_case("application/json"))
        });
    if !is_json {
        return Err(Error::UnsupportedMediaType(
            "expected Content-Type: application/json".into(),
        ));
    }
    let bytes = axum::body::to_bytes(body, MAX_REPORT_BYTES)
        .await
        .map_err(|_| Error::PayloadTooLarge {
            limit: MAX_REPORT_BYTES,
        })?;
    let report: Report = parse_json(&bytes)?;
    Ok(Json(state.fleet.ingest(&server_id, report).await?))
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
