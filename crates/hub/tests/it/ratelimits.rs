//! Rate limits: per user for costly actions, per client for the API, `X-RateLimit-*` headers,
//! and `X-Forwarded-For` believed only from trusted proxies.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::receiver::Receiver;
use crate::common::*;

fn header(resp: &reqwest::Response, name: &str) -> Option<u64> {
    resp.headers().get(name)?.to_str().ok()?.parse().ok()
}

#[tokio::test]
async fn creating_and_testing_webhooks_is_limited_per_user() {
    let receiver = Receiver::start(&[]).await;
    let hub = TestHub::start_with(|c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.rate_limits.webhook_create_per_minute = 2;
        c.rate_limits.webhook_test_per_minute = 1;
    })
    .await;
    let create = |token: &str, name: &str| {
        hub.request(Method::POST, "/api/webhooks", Some(token))
            .json(&json!({ "name": name, "url": receiver.url() }))
    };
    let first = create(&hub.admin_token, "a").send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert_eq!(
        (
            header(&first, "x-ratelimit-limit"),
            header(&first, "x-ratelimit-remaining")
        ),
        (Some(2), Some(1))
    );
    let id = first.json::<Value>().await.unwrap()["webhook_id"]
        .as_str()
        .unwrap()
        .to_string();
    let second = create(&hub.admin_token, "b").send().await.unwrap();
    assert_eq!(header(&second, "x-ratelimit-remaining"), Some(0));
    let third = create(&hub.admin_token, "c").send().await.unwrap();
    assert_eq!(third.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after = header(&third, "retry-after").unwrap();
    assert!((1..=60).contains(&retry_after), "{retry_after}");
    assert_eq!(header(&third, "x-ratelimit-remaining"), Some(0));
    assert!(header(&third, "x-ratelimit-reset").is_some());
    assert_error(
        &json_of(third).await,
        StatusCode::TOO_MANY_REQUESTS,
        "too many requests",
    );
    let (_, list) = hub.get("/api/webhooks", &hub.admin_token).await;
    assert_eq!(list["count"], 2, "the refused creation wrote nothing");

    // Per user: another admin has a bucket of its own.
    hub.create_user("second-admin", "admin").await;
    let other = hub.login("second-admin", USER_PASSWORD).await;
    assert_eq!(
        create(&other, "d").send().await.unwrap().status(),
        StatusCode::CREATED
    );

    let test = |token: &str| {
        hub.request(
            Method::POST,
            &format!("/api/webhooks/{id}/test"),
            Some(token),
        )
    };
    let ok = test(&hub.admin_token).send().await.unwrap();
    assert_eq!(
        (ok.status(), header(&ok, "x-ratelimit-limit")),
        (StatusCode::OK, Some(1))
    );
    let limited = test(&hub.admin_token).send().await.unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    let tests_sent = receiver
        .received()
        .iter()
        .filter(|r| r.json()["event_type"] == "webhook.test")
        .count();
    assert_eq!(tests_sent, 1);
}

#[tokio::test]
async fn the_api_is_limited_per_client_but_probes_and_scrapers_never_are() {
    let hub = TestHub::start_with(|c| c.rate_limits.api_per_minute = 5).await;
    let t = &hub.admin_token;
    for left in (0..5).rev() {
        let resp = hub
            .request(Method::GET, "/api/users/me", Some(t))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            (
                header(&resp, "x-ratelimit-limit"),
                header(&resp, "x-ratelimit-remaining")
            ),
            (Some(5), Some(left))
        );
    }
    let limited = hub
        .request(Method::GET, "/api/audit-logs", Some(t))
        .send()
        .await
        .unwrap();
    assert_eq!(limited.status(), StatusCode::TOO_MANY_REQUESTS);
    assert!(header(&limited, "retry-after").is_some());
    for probe in ["/api/health", "/api/ready"] {
        assert_eq!(
            send(hub.request(Method::GET, probe, None)).await.0,
            StatusCode::OK,
            "{probe}"
        );
    }
    let metrics = hub
        .request(Method::GET, "/api/metrics", Some(t))
        .send()
        .await
        .unwrap();
    assert_eq!(metrics.status(), StatusCode::OK);
    let text = metrics.text().await.unwrap();
    assert!(
        text.contains(r#"smon_rate_limit_requests_total{limiter="api",outcome="rejected"} 1"#),
        "{text}"
    );
    assert!(text.contains(
        r#"smon_http_requests_total{method="GET",route="/api/audit-logs",status="429"} 1"#
    ));
}

/// Fail a login through a "proxy" and return the address the event recorded.
async fn failed_login_ip(hub: &TestHub) -> Value {
    let req = hub
        .request(Method::POST, "/api/auth/login", None)
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.7")
        .json(&json!({ "username": "admin", "password": "wrong-password" }));
    send(req).await;
    hub.events("event_type=user.login_failed").await[0]["ip"].clone()
}

#[tokio::test]
async fn x_forwarded_for_is_believed_only_from_trusted_proxies() {
    let direct = TestHub::start().await;
    assert_eq!(
        failed_login_ip(&direct).await,
        "127.0.0.1",
        "a client cannot choose its address"
    );

    let proxied = TestHub::start_with(|c| {
        c.rate_limits.trusted_proxies = vec!["127.0.0.1/32".into()];
        c.rate_limits.api_per_minute = 2;
    })
    .await;
    // The nearest address the trusted proxy saw is the client.
    assert_eq!(failed_login_ip(&proxied).await, "203.0.113.7");
    let from = |client: &str| {
        proxied
            .request(Method::GET, "/api/users/me", Some(&proxied.admin_token))
            .header("x-forwarded-for", client)
    };
    assert_eq!(
        from("192.0.2.10").send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        from("192.0.2.10").send().await.unwrap().status(),
        StatusCode::OK
    );
    assert_eq!(
        from("192.0.2.10").send().await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from("192.0.2.11").send().await.unwrap().status(),
        StatusCode::OK,
        "each client has its own bucket"
    );
}
