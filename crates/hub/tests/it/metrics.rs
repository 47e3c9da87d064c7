//! `GET /api/metrics`: Prometheus text with requests by route template, webhook and plugin
//! counters, queue depths and memory; for admins or the metrics token.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::agent;
use crate::common::receiver::Receiver;
use crate::common::*;

async fn scrape(hub: &TestHub, token: &str) -> (StatusCode, String, String) {
    let resp = hub
        .request(Method::GET, "/api/metrics", Some(token))
        .send()
        .await
        .unwrap();
    let status = resp.status();
    let content_type = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default();
    (status, content_type, resp.text().await.unwrap())
}

/// The value of the sample whose line starts with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn metrics_count_requests_by_route_template_and_show_the_pipelines() {
    let receiver = Receiver::start(&[]).await;
    let hub = TestHub::start_with(|c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.plugins.allowlist = vec!["jsonl".into()];
        c.plugins
            .config
            .insert("jsonl".into(), json!({ "path": "events.jsonl" }));
        c.metrics_token = "prometheus-scrape-token".into();
    })
    .await;
    let t = &hub.admin_token;
    for id in ["1a", "2b", "3c"] {
        assert_eq!(
            hub.get(&format!("/api/users/{id}"), t).await.0,
            StatusCode::NOT_FOUND
        );
    }
    let (_, created) = hub
        .send_json(
            Method::POST,
            "/api/webhooks",
            t,
            json!({ "name": "m", "url": receiver.url(), "event_types": ["token.created"] }),
        )
        .await;
    assert_eq!(created["success"], true);
    hub.send_json(
        Method::POST,
        "/api/users/me/tokens",
        t,
        json!({ "name": "x" }),
    )
    .await;
    eventually(Duration::from_secs(10), "the delivery", || async {
        (!receiver.received().is_empty()).then_some(())
    })
    .await;

    let text = eventually(Duration::from_secs(10), "the delivery counted", || async {
        let (_, _, text) = scrape(&hub, t).await;
        let delivered = sample(&text, r#"smon_webhook_deliveries_total{status="success"}"#);
        let handled = sample(
            &text,
            r#"smon_plugin_events_total{plugin="jsonl",outcome="handled"}"#,
        );
        (delivered == Some(1.0) && handled >= Some(1.0)).then_some(text)
    })
    .await;
    assert_eq!(
        sample(
            &text,
            r#"smon_http_requests_total{method="GET",route="/api/users/{id}",status="404"}"#
        ),
        Some(3.0)
    );
    assert!(
        !text.contains("/api/users/1a"),
        "raw paths never become labels"
    );
    assert_eq!(
        sample(
            &text,
            r#"smon_http_request_duration_seconds_count{method="GET",route="/api/users/{id}"}"#
        ),
        Some(3.0)
    );
    assert_eq!(
        sample(&text, "smon_webhook_delivery_duration_seconds_count"),
        Some(1.0)
    );
    assert_eq!(sample(&text, "smon_webhook_queue_depth"), Some(0.0));
    assert!(sample(&text, "smon_event_outbox_depth").is_some());
    assert!(sample(&text, "smon_process_resident_memory_bytes").unwrap() > 1_000_000.0);

    // A scraper with the token, without an account; nobody else.
    let (status, content_type, _) = scrape(&hub, "prometheus-scrape-token").await;
    assert_eq!(status, StatusCode::OK);
    assert!(content_type.starts_with("text/plain"), "{content_type}");
    let viewer = hub.token_for_role("viewer").await;
    assert_eq!(scrape(&hub, &viewer).await.0, StatusCode::FORBIDDEN);
    assert_eq!(
        scrape(&hub, "prometheus-scrape-wrong").await.0,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn metrics_show_servers_by_status_and_the_ingest_pipeline() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let (_, token) = hub.create_server("m-1", &[]).await;
    hub.create_server("m-2", &[]).await;
    let now = chrono::Utc::now();
    let two = agent::report(
        vec![
            agent::sample(now - chrono::Duration::seconds(1), 1.0),
            agent::sample(now, 2.0),
        ],
        None,
    );
    assert_eq!(hub.post_report(&token, &two).await.0, StatusCode::OK);
    let bad = agent::report(vec![agent::sample(now, 200.0)], None);
    assert_eq!(
        hub.post_report(&token, &bad).await.0,
        StatusCode::BAD_REQUEST
    );

    let (_, _, text) = scrape(&hub, t).await;
    assert_eq!(sample(&text, r#"smon_servers{status="online"}"#), Some(1.0));
    assert_eq!(
        sample(&text, r#"smon_servers{status="unknown"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"smon_agent_reports_total{outcome="accepted"}"#),
        Some(1.0)
    );
    assert_eq!(
        sample(&text, r#"smon_agent_reports_total{outcome="rejected"}"#),
        Some(1.0)
    );
    assert_eq!(sample(&text, "smon_ingest_samples_total"), Some(2.0));
    assert!(sample(&text, "smon_ingest_batches_total") >= Some(1.0));
    assert_eq!(sample(&text, "smon_ingest_queue_depth"), Some(0.0));
    // The report route is counted under its template like every other.
    assert_eq!(
        sample(
            &text,
            r#"smon_http_requests_total{method="POST",route="/api/agent/v1/report",status="200"}"#
        ),
        Some(1.0)
    );
}
