//! The error model: every bad request gets a JSON `{"error"}` with the right 4xx status.

use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn malformed_bodies_get_400_naming_the_problem() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let raw = |body: &'static str| {
        hub.request(Method::POST, "/api/users", Some(t))
            .header(header::CONTENT_TYPE, "application/json")
            .body(body)
    };
    assert_error(
        &send(raw("{\"username\": ")).await,
        StatusCode::BAD_REQUEST,
        "invalid JSON body",
    );
    assert_error(&send(raw("")).await, StatusCode::BAD_REQUEST, "empty");
    assert_error(
        &send(raw("[1, 2]")).await,
        StatusCode::BAD_REQUEST,
        "invalid JSON body",
    );
    assert_error(
        &send(raw("null")).await,
        StatusCode::BAD_REQUEST,
        "invalid JSON body",
    );
    assert_error(
        &send(raw(
            "{\"username\":\"x1\",\"password\":\"long-enough\",\"role\":\"viewer\"} trailing",
        ))
        .await,
        StatusCode::BAD_REQUEST,
        "trailing",
    );
    assert_error(
        &send(raw(
            "{\"username\":\"x2\",\"password\":\"long-enough\",\"role\":[]}",
        ))
        .await,
        StatusCode::BAD_REQUEST,
        "`role`",
    );
    assert_error(
        &send(raw("{\"password\":\"long-enough\",\"role\":\"viewer\"}")).await,
        StatusCode::BAD_REQUEST,
        "missing field `username`",
    );
    let (_, list) = hub.get("/api/users", t).await;
    assert_eq!(list["count"], 1, "nothing was written");
}

#[tokio::test]
async fn a_body_that_is_not_json_gets_415() {
    let hub = TestHub::start().await;
    let form = hub
        .request(Method::POST, "/api/auth/login", None)
        .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
        .body("username=admin&password=x");
    assert_error(
        &send(form).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "application/json",
    );
    let none = hub
        .request(Method::POST, "/api/auth/login", None)
        .body("{}");
    assert_eq!(send(none).await.0, StatusCode::UNSUPPORTED_MEDIA_TYPE);
}

#[tokio::test]
async fn an_oversized_body_gets_413_and_the_hub_keeps_serving() {
    let hub = TestHub::start_with(|c| c.max_body_bytes = 4096).await;
    let huge = json!({ "username": "big", "password": "p".repeat(10_000), "role": "viewer" });
    let got = hub
        .send_json(Method::POST, "/api/users", &hub.admin_token, huge)
        .await;
    assert_error(
        &got,
        StatusCode::PAYLOAD_TOO_LARGE,
        "larger than 4096 bytes",
    );
    assert_eq!(
        hub.get("/api/users/me", &hub.admin_token).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn unknown_routes_get_404_json_and_wrong_methods_405_json() {
    let hub = TestHub::start().await;
    assert_error(
        &hub.get("/api/nope", &hub.admin_token).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    assert_error(
        &send(hub.request(Method::GET, "/definitely/not/here", None)).await,
        StatusCode::NOT_FOUND,
        "not found",
    );
    let wrong = send(hub.request(Method::DELETE, "/api/health", None)).await;
    assert_error(&wrong, StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
    let wrong = send(hub.request(Method::PATCH, "/api/users", Some(&hub.admin_token))).await;
    assert_error(&wrong, StatusCode::METHOD_NOT_ALLOWED, "method not allowed");
}

#[tokio::test]
async fn bad_query_parameters_get_400() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    assert_error(
        &hub.get("/api/audit-logs?limit=lots", t).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    assert_error(
        &hub.get("/api/audit-logs?limit=0", t).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    assert_error(
        &hub.get("/api/audit-logs?limit=5000", t).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    assert_error(
        &hub.get("/api/audit-logs?offset=-1", t).await,
        StatusCode::BAD_REQUEST,
        "offset",
    );
    assert_error(
        &hub.get("/api/audit-logs?since=yesterday", t).await,
        StatusCode::BAD_REQUEST,
        "since",
    );
    assert_error(
        &hub.get("/api/audit-logs?colour=red", t).await,
        StatusCode::BAD_REQUEST,
        "colour",
    );
    assert_error(
        &hub.get("/api/audit-logs?severity=loud", t).await,
        StatusCode::BAD_REQUEST,
        "severity",
    );
    let unknown_type = hub.get("/api/audit-logs?event_type=user.exploded", t).await;
    assert_error(&unknown_type, StatusCode::BAD_REQUEST, "user.login_failed");
    assert_error(
        &hub.get(
            "/api/audit-logs?since=2026-02-01T00:00:00Z&until=2026-01-01T00:00:00Z",
            t,
        )
        .await,
        StatusCode::BAD_REQUEST,
        "since",
    );
    assert_error(
        &hub.get("/api/activity/recent?limit=101", t).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
}

#[tokio::test]
async fn hostile_inputs_never_reach_a_500() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let nasty = [
        "\u{0000}",
        "' OR 1=1 --",
        "../../etc/passwd",
        "%00",
        "🦀🦀🦀",
        "\\\"",
        "a".repeat(5000).leak(),
    ];
    for s in nasty {
        for (method, path, body) in [
            (
                Method::POST,
                "/api/auth/login".to_string(),
                json!({ "username": s, "password": s }),
            ),
            (
                Method::POST,
                "/api/users".to_string(),
                json!({ "username": s, "password": s, "role": "viewer", "email": s }),
            ),
            (
                Method::PUT,
                format!("/api/users/{}", urlencode(s)),
                json!({ "email": s }),
            ),
            (
                Method::POST,
                "/api/users/me/tokens".to_string(),
                json!({ "name": s }),
            ),
        ] {
            let (status, body) = hub.send_json(method.clone(), &path, t, body).await;
            assert!(
                status.is_success() || status.is_client_error(),
                "{method} {path}: {status} {body}"
            );
            if !status.is_success() {
                assert!(body["error"].is_string(), "{method} {path}: {body}");
            }
        }
        let (status, _) = hub
            .get(&format!("/api/audit-logs?username={}", urlencode(s)), t)
            .await;
        assert_eq!(status, StatusCode::OK);
    }
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}
