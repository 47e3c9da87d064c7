//! Threshold alerts: duration, hysteresis, resolution, offline servers, rules and their
//! validation, acknowledgement.

use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::agent;
use crate::common::*;

/// Create a rule as the admin; returns its id.
async fn rule(hub: &TestHub, body: Value) -> String {
    let (status, created) = hub
        .send_json(Method::POST, "/api/alerts/rules", &hub.admin_token, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["rule_id"].as_str().unwrap().to_string()
}

/// Report one sample with this CPU at `ts`.
async fn cpu(hub: &TestHub, token: &str, ts: DateTime<Utc>, percent: f64) {
    let body = agent::report(vec![agent::sample(ts, percent)], None);
    let (status, answer) = hub.post_report(token, &body).await;
    assert_eq!(status, StatusCode::OK, "{answer}");
}

async fn alerts(hub: &TestHub, query: &str) -> Vec<Value> {
    let (status, body) = hub
        .get(&format!("/api/alerts?{query}"), &hub.admin_token)
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body["alerts"].as_array().unwrap().clone()
}

/// Wait until the evaluator has handled everything reported so far: a sentinel server's
/// report trips a rule with no duration, and observations are judged in order.
async fn settle(hub: &TestHub, sentinel_token: &str, sentinel_rule: &str, ts: DateTime<Utc>) {
    let before = alerts(hub, &format!("rule_id={sentinel_rule}")).await.len();
    cpu(hub, sentinel_token, ts, 100.0).await;
    eventually(Duration::from_secs(5), "the sentinel alert", || async {
        (alerts(hub, &format!("rule_id={sentinel_rule}")).await.len() > before).then_some(())
    })
    .await;
    cpu(
        hub,
        sentinel_token,
        ts + chrono::Duration::milliseconds(1),
        0.0,
    )
    .await;
    eventually(Duration::from_secs(5), "the sentinel resolved", || async {
        alerts(hub, &format!("rule_id={sentinel_rule}&status=firing"))
            .await
            .is_empty()
            .then_some(())
    })
    .await;
}

/// A sentinel server and its rule (fires at once above 99 %, resolves at once).
async fn sentinel(hub: &TestHub) -> (String, String) {
    let (id, token) = hub.create_server("sentinel", &[]).await;
    let rule = rule(
        hub,
        json!({ "name": "sentinel", "metric": "cpu", "threshold": 99, "server_id": id }),
    )
    .await;
    (token, rule)
}

#[tokio::test]
async fn an_alert_fires_after_its_duration_and_not_before() {
    let hub = TestHub::start().await;
    let (sentinel_token, sentinel_rule) = sentinel(&hub).await;
    let (server, token) = hub.create_server("db-1", &["db"]).await;
    let rule_id = rule(
        &hub,
        json!({ "name": "db cpu", "metric": "cpu", "comparison": ">", "threshold": 80,
                "for": "3s", "severity": "critical", "tag": "db" }),
    )
    .await;
    let t0 = Utc::now() - chrono::Duration::seconds(60);
    for s in 0..3 {
        cpu(&hub, &token, t0 + chrono::Duration::seconds(s), 95.0).await;
    }
    settle(&hub, &sentinel_token, &sentinel_rule, t0).await;
    assert!(
        alerts(&hub, &format!("rule_id={rule_id}")).await.is_empty(),
        "2 s of breach is not 3 s"
    );
    cpu(&hub, &token, t0 + chrono::Duration::seconds(3), 96.0).await;
    let fired = eventually(Duration::from_secs(5), "the alert", || async {
        alerts(&hub, &format!("rule_id={rule_id}"))
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(fired["status"], "firing");
    assert_eq!(fired["server_id"], server.as_str());
    assert_eq!(fired["value"], 96.0);
    assert_eq!(fired["threshold"], 80.0);
    assert_eq!(
        fired["pending_since"]
            .as_str()
            .unwrap()
            .parse::<DateTime<Utc>>()
            .unwrap(),
        t0.with_timezone(&Utc).trunc_subsecs_ms()
    );
    let triggered = hub.events("event_type=alert.triggered").await;
    let event = triggered
        .iter()
        .find(|e| e["meta"]["rule_id"] == rule_id.as_str())
        .expect("the rule's alert.triggered");
    assert_eq!(event["severity"], "critical", "the rule's severity");
    assert_eq!(event["server_name"], "db-1");
    assert_eq!(event["meta"]["rule_name"], "db cpu");
    assert_eq!(event["meta"]["value"], 96.0);
    assert_eq!(event["meta"]["threshold"], 80.0);
    assert_eq!(event["meta"]["for_secs"], 3);

    // A breach that ends before the duration never fires.
    let (_, other_token) = hub.create_server("db-2", &["db"]).await;
    let t1 = t0 + chrono::Duration::seconds(10);
    cpu(&hub, &other_token, t1, 95.0).await;
    cpu(&hub, &other_token, t1 + chrono::Duration::seconds(2), 50.0).await;
    cpu(&hub, &other_token, t1 + chrono::Duration::seconds(4), 95.0).await;
    settle(&hub, &sentinel_token, &sentinel_rule, t1).await;
    assert_eq!(alerts(&hub, &format!("rule_id={rule_id}")).await.len(), 1);
}

trait TruncMs {
    fn trunc_subsecs_ms(self) -> Self;
}

impl TruncMs for DateTime<Utc> {
    fn trunc_subsecs_ms(self) -> Self {
        DateTime::from_timestamp_millis(self.timestamp_millis()).unwrap()
    }
}

#[tokio::test]
async fn hysteresis_keeps_a_flapping_value_from_firing_again() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("web-1", &[]).await;
    let rule_id = rule(
        &hub,
        json!({ "name": "web cpu", "metric": "cpu", "threshold": 90, "recovery_threshold": 70,
                "server_id": server }),
    )
    .await;
    let t0 = Utc::now() - chrono::Duration::seconds(60);
    // Around 90 it flaps; only below 70 does it recover.
    for (s, v) in [
        (0, 95.0),
        (1, 85.0),
        (2, 92.0),
        (3, 80.0),
        (4, 97.0),
        (5, 75.0),
    ] {
        cpu(&hub, &token, t0 + chrono::Duration::seconds(s), v).await;
    }
    cpu(&hub, &token, t0 + chrono::Duration::seconds(6), 60.0).await;
    // Events of this rule only: on a slow machine the default offline rule may speak too.
    let of_rule = |events: Vec<Value>| -> Vec<Value> {
        events
            .into_iter()
            .filter(|e| e["meta"]["rule_id"] == rule_id.as_str())
            .collect()
    };
    let resolved = eventually(Duration::from_secs(5), "the resolution", || async {
        of_rule(hub.events("event_type=alert.resolved").await)
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(resolved["meta"]["value"], 60.0);
    assert_eq!(resolved["meta"]["resolution"], "recovered");
    assert_eq!(resolved["severity"], "info");
    assert_eq!(
        of_rule(hub.events("event_type=alert.triggered").await).len(),
        1,
        "one alert for the whole flapping"
    );
    let history = alerts(&hub, &format!("rule_id={rule_id}")).await;
    assert_eq!(history.len(), 1);
    assert_eq!(history[0]["status"], "resolved");
    assert_eq!(history[0]["value"], 95.0);
    assert_eq!(history[0]["resolved_value"], 60.0);

    // Past the threshold again after recovering: a new alert.
    cpu(&hub, &token, t0 + chrono::Duration::seconds(7), 99.0).await;
    eventually(Duration::from_secs(5), "a second alert", || async {
        (alerts(&hub, &format!("rule_id={rule_id}&status=firing"))
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        of_rule(hub.events("event_type=alert.triggered").await).len(),
        2
    );
}

#[tokio::test]
async fn an_offline_server_raises_the_default_alert_until_it_reports() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("edge-1", &[]).await;
    cpu(&hub, &token, Utc::now(), 5.0).await;
    let fired = eventually(Duration::from_secs(10), "the offline alert", || async {
        alerts(&hub, &format!("server_id={server}&status=firing"))
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(fired["rule_name"], "Server offline");
    assert_eq!(fired["metric"], "offline");
    assert_eq!(fired["severity"], "critical");
    let (_, rules) = hub.get("/api/alerts/rules", &hub.admin_token).await;
    let names: Vec<&str> = rules["rules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["name"].as_str().unwrap())
        .collect();
    for default in [
        "CPU above 90 % for 5 minutes",
        "Memory above 90 %",
        "Disk above 90 %",
        "Server offline",
    ] {
        assert!(names.contains(&default), "{default} in {names:?}");
    }

    cpu(&hub, &token, Utc::now(), 5.0).await;
    eventually(Duration::from_secs(5), "resolved by the report", || async {
        alerts(&hub, &format!("server_id={server}&status=resolved"))
            .await
            .into_iter()
            .next()
    })
    .await;
    let (status, acked) = send(hub.request(
        Method::POST,
        &format!("/api/alerts/{}/acknowledge", fired["id"].as_str().unwrap()),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(acked["acknowledged_by"], "admin");
    assert_eq!(hub.events("event_type=alert.acknowledged").await.len(), 1);
}

#[tokio::test]
async fn rules_are_validated_and_disabling_or_deleting_one_resolves_its_alerts() {
    let hub = TestHub::start().await;
    let t = &hub.admin_token;
    for (body, status, needle) in [
        (
            json!({ "metric": "cpu", "threshold": 1 }),
            StatusCode::BAD_REQUEST,
            "name",
        ),
        (
            json!({ "name": "x", "metric": "bogus", "threshold": 1 }),
            StatusCode::BAD_REQUEST,
            "metric",
        ),
        (
            json!({ "name": "x", "metric": "cpu" }),
            StatusCode::BAD_REQUEST,
            "threshold",
        ),
        (
            json!({ "name": "x", "metric": "cpu", "threshold": 150 }),
            StatusCode::BAD_REQUEST,
            "threshold",
        ),
        (
            json!({ "name": "x", "metric": "cpu", "threshold": 90, "comparison": "==" }),
            StatusCode::BAD_REQUEST,
            "comparison",
        ),
        (
            json!({ "name": "x", "metric": "cpu", "threshold": 90, "recovery_threshold": 95 }),
            StatusCode::BAD_REQUEST,
            "recovery_threshold",
        ),
        (
            json!({ "name": "x", "metric": "cpu", "threshold": 90, "for": "five minutes" }),
            StatusCode::BAD_REQUEST,
            "for",
        ),
        (
            json!({ "name": "x", "metric": "cpu", "threshold": 90, "mount": "/var" }),
            StatusCode::BAD_REQUEST,
            "mount",
        ),
        (
            json!({ "name": "x", "metric": "cpu", "threshold": 90, "scope": "tag" }),
            StatusCode::BAD_REQUEST,
            "scope",
        ),
        (
            json!({ "name": "x", "metric": "cpu", "threshold": 90, "server_id": "nope" }),
            StatusCode::BAD_REQUEST,
            "server_id",
        ),
        (
            json!({ "name": "Server offline", "metric": "offline" }),
            StatusCode::CONFLICT,
            "already exists",
        ),
    ] {
        let got = hub
            .send_json(Method::POST, "/api/alerts/rules", t, body.clone())
            .await;
        assert_error(&got, status, needle);
    }
    let viewer = hub.token_for_role("viewer").await;
    let got = hub
        .send_json(
            Method::POST,
            "/api/alerts/rules",
            &viewer,
            json!({ "name": "v", "metric": "cpu", "threshold": 1 }),
        )
        .await;
    assert_error(&got, StatusCode::FORBIDDEN, "may not manage alerts");

    let (server, token) = hub.create_server("disk-1", &[]).await;
    let id = rule(&hub, json!({ "name": "root full", "metric": "disk", "mount": "/", "threshold": 20, "for": 0, "server_id": server })).await;
    let (_, view) = hub.get(&format!("/api/alerts/rules/{id}"), t).await;
    assert_eq!(view["for"], "0s");
    assert_eq!(view["scope"], "server");
    // The test sample's root filesystem is 25 % full.
    cpu(&hub, &token, Utc::now(), 1.0).await;
    eventually(Duration::from_secs(5), "the disk alert", || async {
        (alerts(&hub, &format!("rule_id={id}&status=firing"))
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    let (status, updated) = hub
        .send_json(
            Method::PUT,
            &format!("/api/alerts/rules/{id}"),
            t,
            json!({ "enabled": false, "for": "5m" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["for"], "5m");
    let resolved = &alerts(&hub, &format!("rule_id={id}")).await[0];
    assert_eq!(resolved["status"], "resolved");
    assert_eq!(resolved["resolution"], "rule disabled");
    let changed = hub.events("event_type=alert_rule.updated").await;
    assert_eq!(changed[0]["meta"]["changes"], json!(["for", "enabled"]));

    hub.send_json(
        Method::PUT,
        &format!("/api/alerts/rules/{id}"),
        t,
        json!({ "enabled": true, "for": 0 }),
    )
    .await;
    cpu(&hub, &token, Utc::now(), 1.0).await;
    eventually(Duration::from_secs(5), "firing again", || async {
        (alerts(&hub, &format!("rule_id={id}&status=firing"))
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    let (status, _) =
        send(hub.request(Method::DELETE, &format!("/api/alerts/rules/{id}"), Some(t))).await;
    assert_eq!(status, StatusCode::OK);
    let history = alerts(&hub, &format!("rule_id={id}")).await;
    assert_eq!(history.len(), 2, "history stays");
    assert_eq!(history[0]["resolution"], "rule deleted");
    assert_eq!(
        hub.get(&format!("/api/alerts/rules/{id}"), t).await.0,
        StatusCode::NOT_FOUND
    );
    assert_error(
        &hub.get("/api/alerts?status=open", t).await,
        StatusCode::BAD_REQUEST,
        "status",
    );
}

#[tokio::test]
async fn an_alert_resolves_when_its_server_leaves_the_rules_scope() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("tagged", &["prod"]).await;
    let rule_id = rule(
        &hub,
        json!({ "name": "prod cpu", "metric": "cpu", "threshold": 50, "tag": "prod" }),
    )
    .await;
    cpu(&hub, &token, Utc::now(), 80.0).await;
    eventually(Duration::from_secs(5), "firing", || async {
        (alerts(&hub, &format!("rule_id={rule_id}&status=firing"))
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    hub.send_json(
        Method::PUT,
        &format!("/api/servers/{server}"),
        &hub.admin_token,
        json!({ "tags": ["staging"] }),
    )
    .await;
    let resolved = eventually(Duration::from_secs(10), "resolved by the sweep", || async {
        alerts(&hub, &format!("rule_id={rule_id}&status=resolved"))
            .await
            .into_iter()
            .next()
    })
    .await;
    assert_eq!(resolved["resolution"], "out of scope");
    // A sample from an hour ago (a backfill) raises nothing.
    let (other, other_token) = hub.create_server("late", &["prod"]).await;
    cpu(
        &hub,
        &other_token,
        Utc::now() - chrono::Duration::hours(1),
        99.0,
    )
    .await;
    let (sentinel_token, sentinel_rule) = sentinel(&hub).await;
    settle(&hub, &sentinel_token, &sentinel_rule, Utc::now()).await;
    assert!(alerts(&hub, &format!("server_id={other}")).await.is_empty());
}

#[tokio::test]
async fn an_alert_whose_value_is_gone_resolves_for_lack_of_data() {
    let hub = TestHub::start().await;
    let (server, token) = hub.create_server("nas-1", &[]).await;
    let rule_id = rule(
        &hub,
        json!({ "name": "data full", "metric": "disk", "mount": "/data", "threshold": 40,
                "server_id": server }),
    )
    .await;
    let mut full = agent::sample(Utc::now() - chrono::Duration::minutes(9), 1.0);
    full.filesystems.push(smon_proto::FilesystemUsage {
        mount: "/data".into(),
        fs_type: "xfs".into(),
        total: 100,
        used: 50,
    });
    let (status, _) = hub
        .post_report(&token, &agent::report(vec![full], None))
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(Duration::from_secs(5), "firing", || async {
        (alerts(&hub, &format!("rule_id={rule_id}&status=firing"))
            .await
            .len()
            == 1)
            .then_some(())
    })
    .await;
    // /data is unmounted: the server keeps reporting, without it, for over ten minutes.
    cpu(&hub, &token, Utc::now() + chrono::Duration::minutes(4), 1.0).await;
    let resolved = eventually(
        Duration::from_secs(15),
        "resolved for lack of data",
        || async {
            alerts(&hub, &format!("rule_id={rule_id}&status=resolved"))
                .await
                .into_iter()
                .next()
        },
    )
    .await;
    assert_eq!(resolved["resolution"], "no data");
}
