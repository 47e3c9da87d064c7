//! The role matrix, walked route by route with every role and with no token.
//!
//! The expectations are written out here independently of the code's matrix, and the route list
//! must equal the OpenAPI document's, so a new route without an entry here fails this test.

use std::collections::BTreeSet;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::*;

/// Who may call a route.
#[derive(Clone, Copy)]
enum Access {
    /// No token needed.
    Public,
    /// Any logged-in user.
    Authenticated,
    /// Only these roles.
    Roles(&'static [&'static str]),
    /// An agent or enrollment token, never a user's: everyone here is refused.
    Agent,
}

use Access::*;

const ADMIN: &[&str] = &["admin"];
const AUDIT: &[&str] = &["admin", "auditor"];
const OPS: &[&str] = &["admin", "operator"];

/// Every route, who may call it, and a body that does no lasting harm when allowed.
fn routes() -> Vec<(Method, &'static str, Access, Option<Value>)> {
    vec![
        (Method::GET, "/api/health", Public, None),
        (Method::GET, "/api/ready", Public, None),
        (Method::GET, "/api/openapi.json", Public, None),
        (
            Method::POST,
            "/api/auth/login",
            Public,
            Some(json!({ "username": "nobody", "password": "x" })),
        ),
        (Method::POST, "/api/auth/logout", Authenticated, None),
        (Method::GET, "/api/auth/verify", Authenticated, None),
        (Method::GET, "/api/users", Roles(ADMIN), None),
        (Method::POST, "/api/users", Roles(ADMIN), Some(json!({}))),
        (Method::GET, "/api/users/me", Authenticated, None),
        (
            Method::POST,
            "/api/users/me/password",
            Authenticated,
            Some(json!({})),
        ),
        (Method::GET, "/api/users/me/tokens", Authenticated, None),
        (
            Method::POST,
            "/api/users/me/tokens",
            Authenticated,
            Some(json!({ "name": "" })),
        ),
        (
            Method::DELETE,
            "/api/users/me/tokens/{id}",
            Authenticated,
            None,
        ),
        (Method::GET, "/api/users/{id}", Roles(ADMIN), None),
        (
            Method::PUT,
            "/api/users/{id}",
            Roles(ADMIN),
            Some(json!({ "role": "nonsense" })),
        ),
        (Method::DELETE, "/api/users/{id}", Roles(ADMIN), None),
        (Method::GET, "/api/audit-logs", Roles(AUDIT), None),
        (Method::GET, "/api/activity/recent", Authenticated, None),
        (Method::GET, "/api/events/types", Authenticated, None),
        (Method::GET, "/api/servers", Authenticated, None),
        (Method::POST, "/api/servers", Roles(OPS), Some(json!({}))),
        (Method::GET, "/api/servers/{id}", Authenticated, None),
        (
            Method::PUT,
            "/api/servers/{id}",
            Roles(OPS),
            Some(json!({ "name": "x" })),
        ),
        (Method::DELETE, "/api/servers/{id}", Roles(OPS), None),
        (Method::POST, "/api/servers/{id}/token", Roles(OPS), None),
        (
            Method::GET,
            "/api/servers/{id}/metrics?metric=cpu",
            Authenticated,
            None,
        ),
        (
            Method::GET,
            "/api/servers/{id}/inventory/latest",
            Authenticated,
            None,
        ),
        (
            Method::POST,
            "/api/servers/{id}/inventory/refresh",
            Roles(OPS),
            None,
        ),
        (Method::GET, "/api/stats/overview", Authenticated, None),
        (Method::POST, "/api/agent/v1/report", Agent, Some(json!({}))),
        (
            Method::POST,
            "/api/agent/v1/enroll",
            Agent,
            Some(json!({ "enrollment_token": "x", "name": "x" })),
        ),
        (
            Method::POST,
            "/api/servers/{id}/tasks",
            Roles(OPS),
            Some(json!({ "command": "echo" })),
        ),
        (Method::GET, "/api/tasks", Authenticated, None),
        (Method::POST, "/api/tasks", Roles(OPS), Some(json!({}))),
        (Method::GET, "/api/tasks/{id}", Authenticated, None),
        (Method::POST, "/api/tasks/{id}/cancel", Roles(OPS), None),
        (
            Method::POST,
            "/api/agent/v1/tasks/{id}/result",
            Agent,
            Some(json!({})),
        ),
        (Method::GET, "/api/alerts/rules", Authenticated, None),
        (
            Method::POST,
            "/api/alerts/rules",
            Roles(OPS),
            Some(json!({})),
        ),
        (Method::GET, "/api/alerts/rules/{id}", Authenticated, None),
        (
            Method::PUT,
            "/api/alerts/rules/{id}",
            Roles(OPS),
            Some(json!({ "name": "x" })),
        ),
        (Method::DELETE, "/api/alerts/rules/{id}", Roles(OPS), None),
        (Method::GET, "/api/alerts", Authenticated, None),
        (Method::GET, "/api/alerts/{id}", Authenticated, None),
        (
            Method::POST,
            "/api/alerts/{id}/acknowledge",
            Roles(OPS),
            None,
        ),
        (Method::GET, "/api/plugins", Roles(ADMIN), None),
        (Method::GET, "/api/metrics", Roles(ADMIN), None),
        (Method::GET, "/api/webhooks", Roles(ADMIN), None),
        (Method::POST, "/api/webhooks", Roles(ADMIN), Some(json!({}))),
        (Method::GET, "/api/webhooks/{id}", Roles(ADMIN), None),
        (
            Method::PUT,
            "/api/webhooks/{id}",
            Roles(ADMIN),
            Some(json!({ "name": "x" })),
        ),
        (Method::DELETE, "/api/webhooks/{id}", Roles(ADMIN), None),
        (Method::POST, "/api/webhooks/{id}/test", Roles(ADMIN), None),
        (
            Method::POST,
            "/api/webhooks/{id}/secret/rotate",
            Roles(ADMIN),
            None,
        ),
        (
            Method::GET,
            "/api/webhooks/{id}/deliveries",
            Roles(ADMIN),
            None,
        ),
        (
            Method::POST,
            "/api/webhooks/{id}/deliveries/{delivery_id}/redeliver",
            Roles(ADMIN),
            None,
        ),
        (
            Method::GET,
            "/api/notifications/channels",
            Roles(ADMIN),
            None,
        ),
        (
            Method::POST,
            "/api/notifications/channels",
            Roles(ADMIN),
            Some(json!({})),
        ),
        (
            Method::GET,
            "/api/notifications/channels/{id}",
            Roles(ADMIN),
            None,
        ),
        (
            Method::PUT,
            "/api/notifications/channels/{id}",
            Roles(ADMIN),
            Some(json!({ "name": "x" })),
        ),
        (
            Method::DELETE,
            "/api/notifications/channels/{id}",
            Roles(ADMIN),
            None,
        ),
        (
            Method::POST,
            "/api/notifications/channels/{id}/test",
            Roles(ADMIN),
            None,
        ),
        (
            Method::GET,
            "/api/notifications/channels/{id}/deliveries",
            Roles(ADMIN),
            None,
        ),
    ]
}

#[tokio::test]
async fn the_route_list_matches_the_openapi_document() {
    let hub = TestHub::start().await;
    let (status, spec) = send(hub.request(Method::GET, "/api/openapi.json", None)).await;
    assert_eq!(status, StatusCode::OK);
    let mut documented = BTreeSet::new();
    for (path, ops) in spec["paths"].as_object().unwrap() {
        for method in ops.as_object().unwrap().keys() {
            documented.insert((method.to_uppercase(), path.clone()));
        }
    }
    documented.insert(("GET".into(), "/api/openapi.json".into()));
    let tested: BTreeSet<(String, String)> = routes()
        .into_iter()
        .map(|(m, p, _, _)| (m.to_string(), p.split('?').next().unwrap().to_string()))
        .collect();
    assert_eq!(
        documented, tested,
        "a route is missing from this test or from the spec"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_route_admits_exactly_the_roles_of_the_matrix() {
    let hub = TestHub::start().await;
    let roles = ["admin", "operator", "viewer", "auditor"];
    let mut tokens = Vec::new();
    for role in roles {
        tokens.push((role, hub.token_for_role(role).await));
    }
    for (method, path, access, body) in routes() {
        // Ids that do not exist: an admitted caller gets 404, not a change.
        let path = path
            .replace("{id}", "00000000-0000-7000-8000-000000000000")
            .replace("{delivery_id}", "00000000-0000-7000-8000-000000000001");
        let request = |token: Option<&str>| {
            let req = hub.request(method.clone(), &path, token);
            match &body {
                Some(b) => req.json(b),
                None => req,
            }
        };

        let anonymous = send(request(None)).await;
        if matches!(access, Agent) {
            for (who, got) in [("nobody", anonymous)]
                .into_iter()
                .chain(futures_of(&tokens, &request).await)
            {
                let message = got.1["error"].as_str().unwrap_or_default().to_string();
                assert!(
                    matches!(got.0, StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN)
                        && !message.contains("may not"),
                    "{who} must be refused at {method} {path} without a role check: {got:?}"
                );
            }
            continue;
        }
        if matches!(access, Public) {
            let message = anonymous.1["error"].as_str().unwrap_or_default();
            assert!(
                anonymous.0 != StatusCode::FORBIDDEN
                    && !message.contains("authentication required"),
                "{method} {path} should be public: {anonymous:?}"
            );
            continue;
        }
        assert_error(
            &anonymous,
            StatusCode::UNAUTHORIZED,
            "authentication required",
        );

        for (role, token) in &tokens {
            // Logout really revokes, so it gets a session of its own.
            let fresh;
            let token = if path == "/api/auth/logout" {
                fresh = hub
                    .login(
                        &format!("{role}-{}", token_owner_suffix(&hub, token).await),
                        USER_PASSWORD,
                    )
                    .await;
                &fresh
            } else {
                token
            };
            let got = send(request(Some(token))).await;
            let allowed = match access {
                Roles(allowed) => allowed.contains(role),
                _ => true,
            };
            if allowed {
                assert!(
                    got.0 != StatusCode::UNAUTHORIZED
                        && got.0 != StatusCode::FORBIDDEN
                        && !got.0.is_server_error(),
                    "{role} should be admitted to {method} {path}: {got:?}"
                );
            } else {
                assert_error(&got, StatusCode::FORBIDDEN, &format!("role {role} may not"));
            }
        }
    }
}

/// Each role's answer to `request`.
async fn futures_of(
    tokens: &[(&'static str, String)],
    request: &impl Fn(Option<&str>) -> reqwest::RequestBuilder,
) -> Vec<(&'static str, (StatusCode, Value))> {
    let mut out = Vec::new();
    for (role, token) in tokens {
        out.push((*role, send(request(Some(token))).await));
    }
    out
}

/// The suffix of the username behind `token` (the part after `<role>-`).
async fn token_owner_suffix(hub: &TestHub, token: &str) -> String {
    let (_, me) = hub.get("/api/users/me", token).await;
    let name = me["username"].as_str().unwrap();
    name.split_once('-').unwrap().1.to_string()
}

#[tokio::test]
async fn no_answer_leaks_a_password_hash_or_another_users_token() {
    let hub = TestHub::start().await;
    let viewer = hub.token_for_role("viewer").await;
    let (_, pat) = hub
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            &viewer,
            json!({ "name": "x" }),
        )
        .await;
    let pat = pat["token"].as_str().unwrap().to_string();
    for path in [
        "/api/users",
        "/api/users/me",
        "/api/audit-logs?limit=1000",
        "/api/activity/recent?limit=100",
        "/api/users/me/tokens",
    ] {
        let (_, body) = hub.get(path, &hub.admin_token).await;
        let text = body.to_string();
        assert!(!text.contains("$argon2"), "{path} leaks a hash");
        assert!(
            !text.contains(&pat) && !text.contains(&viewer),
            "{path} leaks a token"
        );
        assert!(
            !text.contains(USER_PASSWORD) && !text.contains(ADMIN_PASSWORD),
            "{path} leaks a password"
        );
    }
}
