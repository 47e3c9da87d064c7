//! Response caches: repeated reads are served from the cache, and a write that changes an
//! answer is visible in the very next read.

use chrono::Utc;
use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::agent;
use crate::common::*;

async fn counter(hub: &TestHub, cache: &str, outcome: &str) -> f64 {
    let text = hub
        .request(Method::GET, "/api/metrics", Some(&hub.admin_token))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let series = format!(r#"smon_cache_requests_total{{cache="{cache}",outcome="{outcome}"}} "#);
    text.lines()
        .find_map(|l| l.strip_prefix(&series))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {series} in {text}"))
}

#[tokio::test]
async fn repeated_reads_hit_and_writes_are_never_hidden_by_the_cache() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    let (id, token) = hub.create_server("c-1", &["web"]).await;
    for _ in 0..3 {
        let (status, page) = hub.get("/api/servers?tag=web", t).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(page["total"], 1);
    }
    assert_eq!(counter(&hub, "servers", "miss").await, 1.0);
    assert_eq!(counter(&hub, "servers", "hit").await, 2.0);

    // A new server is in the next answer, not ten seconds later.
    hub.create_server("c-2", &["web"]).await;
    assert_eq!(hub.get("/api/servers?tag=web", t).await.1["total"], 2);
    // So is a rename, and a status change.
    hub.send_json(
        Method::PUT,
        &format!("/api/servers/{id}"),
        t,
        json!({ "name": "c-one" }),
    )
    .await;
    let (_, page) = hub.get("/api/servers?tag=web", t).await;
    assert_eq!(page["servers"][1]["name"], "c-one", "{page}");
    let (_, overview) = hub.get("/api/stats/overview", t).await;
    assert_eq!(overview["online_servers"], 0);
    let body = agent::report(vec![agent::sample(Utc::now(), 1.0)], None);
    assert_eq!(hub.post_report(&token, &body).await.0, StatusCode::OK);
    let (_, overview) = hub.get("/api/stats/overview", t).await;
    assert_eq!(
        overview["online_servers"], 1,
        "the status change invalidated the overview"
    );
    let (_, page) = hub.get("/api/servers?status=online", t).await;
    assert_eq!(page["total"], 1);
    // A deletion too.
    send(hub.request(Method::DELETE, &format!("/api/servers/{id}"), Some(t))).await;
    assert_eq!(hub.get("/api/servers?tag=web", t).await.1["total"], 1);

    // Recent activity: cached per role class and limit, invalidated by any new event.
    let viewer = hub.token_for_role("viewer").await;
    let (_, before) = hub.get("/api/activity/recent?limit=5", &viewer).await;
    let (_, again) = hub.get("/api/activity/recent?limit=5", &viewer).await;
    assert_eq!(before, again);
    assert!(counter(&hub, "activity", "hit").await >= 1.0);
    hub.create_server("c-3", &[]).await;
    let (_, after) = hub.get("/api/activity/recent?limit=5", &viewer).await;
    assert_eq!(after["activities"][0]["event_type"], "server.created");
    assert_eq!(after["activities"][0]["server_name"], "c-3");
    // The viewer never gets the admin's answer with client addresses.
    let (_, admin) = hub.get("/api/activity/recent?limit=5", t).await;
    assert!(admin["activities"][0]["ip"].is_string());
    assert!(after["activities"][0]["ip"].is_null());
    // Errors are answered, not cached: the second bad request is no hit.
    let hits = counter(&hub, "servers", "hit").await;
    assert_error(
        &hub.get("/api/servers?limit=0", t).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    assert_error(
        &hub.get("/api/servers?limit=0", t).await,
        StatusCode::BAD_REQUEST,
        "limit",
    );
    assert_eq!(counter(&hub, "servers", "hit").await, hits);
}
