//! Login, logout, sessions, cookies, expiry, personal tokens and brute-force protection.

use std::time::Duration;

use reqwest::{Method, StatusCode, header};
use serde_json::json;

use crate::common::*;

#[tokio::test]
async fn login_returns_a_working_token_and_a_hardened_cookie() {
    let hub = TestHub::start().await;
    let resp = hub
        .request(Method::POST, "/api/auth/login", None)
        .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }))
        .send()
        .await
        .unwrap();
    let cookie = resp.headers()[header::SET_COOKIE]
        .to_str()
        .unwrap()
        .to_string();
    let (status, body) = json_of(resp).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_eq!(body["username"], "admin");
    assert_eq!(body["role"], "admin");
    assert_eq!(body["user"]["username"], "admin");
    assert!(body["user"].get("password_hash").is_none());
    let token = body["token"].as_str().unwrap();
    assert!(
        cookie.starts_with(&format!("smon_session={token}")),
        "{cookie}"
    );
    assert!(
        cookie.contains("HttpOnly") && cookie.contains("SameSite=Lax"),
        "{cookie}"
    );

    let (status, me) = hub.get("/api/users/me", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(me["username"], "admin");
    assert!(me["last_login_at"].is_string());

    let (status, verify) = hub.get("/api/auth/verify", token).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        verify,
        json!({ "valid": true, "user_id": me["id"], "username": "admin", "role": "admin" })
    );

    let events = hub.events("event_type=user.login&username=admin").await;
    assert!(!events.is_empty(), "login recorded");
}

#[tokio::test]
async fn the_session_cookie_authenticates_a_browser() {
    let hub = TestHub::start().await;
    let by_cookie = hub
        .client
        .get(hub.url("/api/users/me"))
        .header(
            header::COOKIE,
            format!("theme=dark; smon_session={}", hub.admin_token),
        )
        .send()
        .await
        .unwrap();
    let (status, body) = json_of(by_cookie).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["username"], "admin");
}

#[tokio::test]
async fn wrong_passwords_and_unknown_users_are_refused_and_recorded() {
    let hub = TestHub::start().await;
    let wrong = hub.try_login("admin", "not-the-password").await;
    assert_error(
        &wrong,
        StatusCode::UNAUTHORIZED,
        "invalid username or password",
    );
    let unknown = hub.try_login("nobody", "whatever-password").await;
    // Same answer: the API does not reveal which usernames exist.
    assert_eq!(unknown, wrong);

    let failed = hub.events("event_type=user.login_failed").await;
    assert_eq!(failed.len(), 2, "{failed:?}");
    let reasons: Vec<&str> = failed
        .iter()
        .map(|e| e["meta"]["reason"].as_str().unwrap())
        .collect();
    assert!(
        reasons.contains(&"bad_password") && reasons.contains(&"unknown_user"),
        "{reasons:?}"
    );
    assert_eq!(failed[0]["username"], "nobody");
    assert_eq!(failed[0]["ip"], "127.0.0.1");
    assert_eq!(failed[0]["severity"], "warning");
    assert!(
        !failed[0].to_string().contains("whatever-password"),
        "password leaked into event"
    );
}

#[tokio::test]
async fn logout_revokes_the_session_at_once() {
    let hub = TestHub::start().await;
    let token = hub.login("admin", ADMIN_PASSWORD).await;
    let other = hub.login("admin", ADMIN_PASSWORD).await;
    let (status, body) = send(hub.request(Method::POST, "/api/auth/logout", Some(&token))).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["success"], true);
    assert_error(
        &hub.get("/api/auth/verify", &token).await,
        StatusCode::UNAUTHORIZED,
        "invalid or expired",
    );
    // Other sessions of the same user live on.
    assert_eq!(hub.get("/api/auth/verify", &other).await.0, StatusCode::OK);
    assert_eq!(hub.events("event_type=user.logout").await.len(), 1);
}

#[tokio::test]
async fn requests_without_or_with_garbage_tokens_get_401() {
    let hub = TestHub::start().await;
    let none = send(hub.request(Method::GET, "/api/users/me", None)).await;
    assert_error(&none, StatusCode::UNAUTHORIZED, "authentication required");
    for bad in ["nonsense", "smon_s_forged", "smon_pat_forged", ""] {
        let got = hub.get("/api/users/me", bad).await;
        assert_eq!(got.0, StatusCode::UNAUTHORIZED, "{bad:?}: {}", got.1);
    }
    let basic = send(
        hub.request(Method::GET, "/api/users/me", None)
            .basic_auth("admin", Some(ADMIN_PASSWORD)),
    )
    .await;
    assert_eq!(basic.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn an_idle_session_expires() {
    let hub = TestHub::start_with(|c| c.auth.session_idle_secs = 2).await;
    let token = hub.login("admin", ADMIN_PASSWORD).await;
    assert_eq!(hub.get("/api/auth/verify", &token).await.0, StatusCode::OK);
    tokio::time::sleep(Duration::from_millis(2300)).await;
    assert_error(
        &hub.get("/api/auth/verify", &token).await,
        StatusCode::UNAUTHORIZED,
        "expired",
    );
}

#[tokio::test]
async fn a_used_session_stays_alive_past_the_idle_timeout() {
    let hub = TestHub::start_with(|c| c.auth.session_idle_secs = 2).await;
    let token = hub.login("admin", ADMIN_PASSWORD).await;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(600)).await;
        assert_eq!(hub.get("/api/auth/verify", &token).await.0, StatusCode::OK);
    }
}

#[tokio::test]
async fn a_session_expires_at_its_absolute_limit_even_when_used() {
    let hub = TestHub::start_with(|c| c.auth.session_max_secs = 2).await;
    let token = hub.login("admin", ADMIN_PASSWORD).await;
    eventually(Duration::from_secs(5), "absolute expiry", || async {
        (hub.get("/api/auth/verify", &token).await.0 == StatusCode::UNAUTHORIZED).then_some(())
    })
    .await;
}

#[tokio::test]
async fn personal_tokens_are_shown_once_work_and_can_be_revoked() {
    let hub = TestHub::start().await;
    let viewer = hub.token_for_role("viewer").await;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            &viewer,
            json!({ "name": "grafana", "expires_in_days": 30 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let pat = created["token"].as_str().unwrap().to_string();
    let id = created["token_id"].as_str().unwrap().to_string();
    assert!(pat.starts_with("smon_pat_"));
    assert!(created["expires_at"].is_string());

    let (_, list) = hub.get("/api/users/me/tokens", &viewer).await;
    assert_eq!(list["count"], 1);
    assert_eq!(list["tokens"][0]["name"], "grafana");
    assert!(!list.to_string().contains(&pat), "token value listed again");

    // The token carries the user's role.
    let (status, verify) = hub.get("/api/auth/verify", &pat).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(verify["role"], "viewer");
    assert_eq!(hub.get("/api/users", &pat).await.0, StatusCode::FORBIDDEN);
    // Logout ends sessions, not personal tokens.
    let logout = send(hub.request(Method::POST, "/api/auth/logout", Some(&pat))).await;
    assert_error(&logout, StatusCode::BAD_REQUEST, "personal token");

    // Nobody else can revoke it.
    let (status, _) = send(hub.request(
        Method::DELETE,
        &format!("/api/users/me/tokens/{id}"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = send(hub.request(
        Method::DELETE,
        &format!("/api/users/me/tokens/{id}"),
        Some(&viewer),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hub.get("/api/auth/verify", &pat).await.0,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(hub.events("event_type=token.created").await.len(), 1);
    assert_eq!(hub.events("event_type=token.revoked").await.len(), 1);
}

#[tokio::test]
async fn personal_token_input_is_validated() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let empty = hub
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            t,
            json!({ "name": " " }),
        )
        .await;
    assert_error(&empty, StatusCode::BAD_REQUEST, "name");
    let forever = hub
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            t,
            json!({ "name": "x", "expires_in_days": 0 }),
        )
        .await;
    assert_error(&forever, StatusCode::BAD_REQUEST, "expires_in_days");
    let (_, list) = hub.get("/api/users/me/tokens", t).await;
    assert_eq!(list["count"], 0, "nothing written by refused requests");
}

#[tokio::test]
async fn too_many_attempts_for_one_username_get_429_with_retry_after() {
    let hub = TestHub::start_with(|c| {
        c.auth.login_user_attempts = 3;
        c.auth.login_window_secs = 600;
    })
    .await;
    hub.create_user("victim", "viewer").await;
    for _ in 0..3 {
        assert_eq!(
            hub.try_login("victim", "wrong-password").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let resp = hub
        .request(Method::POST, "/api/auth/login", None)
        .json(&json!({ "username": "victim", "password": USER_PASSWORD }))
        .send()
        .await
        .unwrap();
    let retry_after: u64 = resp.headers()[header::RETRY_AFTER]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        (1..=600).contains(&retry_after),
        "Retry-After {retry_after}"
    );
    assert_error(
        &json_of(resp).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests",
    );
    // Other usernames are not affected by this username's limit.
    assert_eq!(
        hub.try_login("admin", ADMIN_PASSWORD).await.0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn too_many_attempts_from_one_address_get_429() {
    let hub = TestHub::start_with(|c| c.auth.login_ip_attempts = 4).await;
    // The harness's own admin login used one attempt.
    for i in 0..3 {
        assert_eq!(
            hub.try_login(&format!("user{i}"), "wrong-password").await.0,
            StatusCode::UNAUTHORIZED
        );
    }
    let limited = hub.try_login("admin", ADMIN_PASSWORD).await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "retry in");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_logins_all_get_distinct_working_sessions() {
    let hub = TestHub::start().await;
    let mut logins = tokio::task::JoinSet::new();
    for _ in 0..16 {
        let req = hub
            .request(Method::POST, "/api/auth/login", None)
            .json(&json!({ "username": "admin", "password": ADMIN_PASSWORD }));
        logins.spawn(send(req));
    }
    let mut tokens: Vec<String> = logins
        .join_all()
        .await
        .into_iter()
        .map(|(status, body)| {
            assert_eq!(status, StatusCode::OK, "{body}");
            body["token"].as_str().unwrap().to_string()
        })
        .collect();
    for t in &tokens {
        assert_eq!(hub.get("/api/auth/verify", t).await.0, StatusCode::OK);
    }
    tokens.sort();
    tokens.dedup();
    assert_eq!(tokens.len(), 16);
    // 16 here plus the harness's own login.
    assert_eq!(hub.events("event_type=user.login").await.len(), 17);
}

#[tokio::test]
async fn guessing_the_current_password_through_a_session_is_limited_and_recorded() {
    let hub = TestHub::start_with(|c| c.auth.login_user_attempts = 3).await;
    let token = hub.token_for_role("viewer").await; // one attempt: the login
    let guess = json!({ "current_password": "guess-guess", "new_password": "a-new-password" });
    for _ in 0..2 {
        let got = hub
            .send_json(
                Method::POST,
                "/api/users/me/password",
                &token,
                guess.clone(),
            )
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, "current_password");
    }
    let limited = hub
        .send_json(Method::POST, "/api/users/me/password", &token, guess)
        .await;
    assert_error(&limited, StatusCode::TOO_MANY_REQUESTS, "too many requests");
    let failed = hub.events("event_type=user.login_failed").await;
    assert_eq!(failed.len(), 2);
    assert_eq!(failed[0]["meta"]["reason"], "bad_current_password");
}

#[tokio::test]
async fn changing_a_password_ends_sessions_and_needs_the_current_one() {
    let hub = TestHub::start().await;
    let token = hub.token_for_role("operator").await;
    let wrong = hub
        .send_json(
            Method::POST,
            "/api/users/me/password",
            &token,
            json!({ "current_password": "nope-nope", "new_password": "a-new-password" }),
        )
        .await;
    assert_error(&wrong, StatusCode::BAD_REQUEST, "current_password");
    let short = hub
        .send_json(
            Method::POST,
            "/api/users/me/password",
            &token,
            json!({ "current_password": USER_PASSWORD, "new_password": "short" }),
        )
        .await;
    assert_error(&short, StatusCode::BAD_REQUEST, "at least 8");
    assert_eq!(
        hub.get("/api/auth/verify", &token).await.0,
        StatusCode::OK,
        "refusals change nothing"
    );

    let (status, _) = hub
        .send_json(
            Method::POST,
            "/api/users/me/password",
            &token,
            json!({ "current_password": USER_PASSWORD, "new_password": "a-new-password" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hub.get("/api/auth/verify", &token).await.0,
        StatusCode::UNAUTHORIZED
    );
    let (_, me) = hub.get("/api/auth/verify", &hub.admin_token).await;
    assert_eq!(me["username"], "admin", "other users' sessions unaffected");
}
