//! The event log: catalog, audit log filters and paging, recent activity.

use std::collections::BTreeSet;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::agent;
use crate::common::receiver::Receiver;
use crate::common::*;

/// Do one of everything the hub can do, so that every catalog type gets emitted.
async fn exercise_everything(hub: &TestHub) {
    let t = &hub.admin_token;
    let id = hub.create_user("erin", "operator").await;
    hub.send_json(
        Method::PUT,
        &format!("/api/users/{id}"),
        t,
        json!({ "role": "viewer" }),
    )
    .await;
    let _ = hub.try_login("erin", "wrong-password").await;
    let erin = hub.login("erin", USER_PASSWORD).await;
    let (_, pat) = hub
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            &erin,
            json!({ "name": "ci" }),
        )
        .await;
    let pat_id = pat["token_id"].as_str().unwrap();
    send(hub.request(
        Method::DELETE,
        &format!("/api/users/me/tokens/{pat_id}"),
        Some(&erin),
    ))
    .await;
    send(hub.request(Method::POST, "/api/auth/logout", Some(&erin))).await;
    send(hub.request(Method::DELETE, &format!("/api/users/{id}"), Some(t))).await;
}

/// Create a server, change it, have it report, ask for its inventory, let it go silent until
/// it is offline, then delete it.
async fn exercise_the_fleet(hub: &TestHub) {
    let t = &hub.admin_token;
    let (id, token) = hub.create_server("web-1", &["prod"]).await;
    let path = format!("/api/servers/{id}");
    let (status, _) = hub
        .send_json(Method::PUT, &path, t, json!({ "description": "front" }))
        .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = hub
        .post_report(
            &token,
            &agent::report(vec![agent::sample(chrono::Utc::now(), 5.0)], None),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, _) =
        send(hub.request(Method::POST, &format!("{path}/inventory/refresh"), Some(t))).await;
    assert_eq!(status, StatusCode::ACCEPTED);
    // Reported with a 1 s interval: offline after 3 missed reports.
    eventually(Duration::from_secs(10), "server.offline", || async {
        (!hub.events("event_type=server.offline").await.is_empty()).then_some(())
    })
    .await;
    exercise_tasks(hub, &id, &token).await;
    exercise_alerts(hub, &token).await;
    let (status, _) = send(hub.request(Method::DELETE, &path, Some(t))).await;
    assert_eq!(status, StatusCode::OK);
}

/// A rule that fires, is acknowledged and resolves, then is changed and deleted.
async fn exercise_alerts(hub: &TestHub, agent_token: &str) {
    let t = &hub.admin_token;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/alerts/rules",
            t,
            json!({ "name": "hot", "metric": "cpu", "threshold": 50 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let rule = format!("/api/alerts/rules/{}", created["rule_id"].as_str().unwrap());
    let report = |cpu: f64| async move {
        let sample = agent::sample(chrono::Utc::now(), cpu);
        hub.post_report(agent_token, &agent::report(vec![sample], None))
            .await
    };
    assert_eq!(report(90.0).await.0, StatusCode::OK);
    let alert = eventually(Duration::from_secs(5), "alert.triggered", || async {
        hub.events("event_type=alert.triggered")
            .await
            .into_iter()
            .next()
    })
    .await;
    let id = alert["target_id"].as_str().unwrap();
    send(hub.request(
        Method::POST,
        &format!("/api/alerts/{id}/acknowledge"),
        Some(t),
    ))
    .await;
    assert_eq!(report(10.0).await.0, StatusCode::OK);
    eventually(Duration::from_secs(5), "alert.resolved", || async {
        (!hub.events("event_type=alert.resolved").await.is_empty()).then_some(())
    })
    .await;
    hub.send_json(Method::PUT, &rule, t, json!({ "threshold": 60 }))
        .await;
    send(hub.request(Method::DELETE, &rule, Some(t))).await;
}

/// Tasks that finish, fail, time out and are cancelled, reported as an agent would.
async fn exercise_tasks(hub: &TestHub, server: &str, agent_token: &str) {
    let mut ids = Vec::new();
    for _ in 0..4 {
        let (status, created) = hub
            .send_json(
                Method::POST,
                &format!("/api/servers/{server}/tasks"),
                &hub.admin_token,
                json!({ "command": "echo hi" }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{created}");
        ids.push(created["task_id"].as_str().unwrap().to_string());
    }
    let update = |id: &str, body: Value| {
        hub.client
            .post(hub.url(&smon_proto::task_update_path(id)))
            .bearer_auth(agent_token)
            .json(&body)
    };
    let now = chrono::Utc::now();
    for (id, outcome, code) in [
        (&ids[0], "exited", Some(0)),
        (&ids[1], "exited", Some(1)),
        (&ids[2], "timeout", None),
    ] {
        let (status, _) = send(update(id, json!({ "outcome": "running", "at": now }))).await;
        assert_eq!(status, StatusCode::OK);
        let body = json!({ "outcome": outcome, "exit_code": code, "at": now });
        let (status, _) = send(update(id, body)).await;
        assert_eq!(status, StatusCode::OK);
    }
    let (status, _) = send(hub.request(
        Method::POST,
        &format!("/api/tasks/{}/cancel", ids[3]),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn every_catalog_type_is_really_emitted_with_all_event_keys() {
    // A plugin that always fails, so that plugin.error is emitted too; a receiver that
    // accepts the test delivery, then answers 410 Gone, so that the webhook is disabled.
    let receiver = Receiver::start(&[200, 410]).await;
    let hub = TestHub::start_with(|c| {
        c.plugins.allowlist = vec!["exec".into()];
        c.plugins
            .config
            .insert("exec".into(), json!({ "command": "false" }));
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    let t = &hub.admin_token;
    let (_, created) = hub
        .send_json(
            Method::POST,
            "/api/webhooks",
            t,
            json!({ "name": "gone", "url": receiver.url(), "event_types": ["token.created"] }),
        )
        .await;
    let webhook = format!("/api/webhooks/{}", created["webhook_id"].as_str().unwrap());
    send(hub.request(Method::POST, &format!("{webhook}/test"), Some(t))).await;
    hub.send_json(Method::PUT, &webhook, t, json!({ "retry_max": 2 }))
        .await;
    // A notification channel likewise: tested, changed, then disabled by a 410.
    let chat = Receiver::start(&[200, 410]).await;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/notifications/channels",
            t,
            json!({ "name": "gone", "kind": "discord",
                    "config": { "url": format!("{}/api/webhooks/1/x", chat.base()) },
                    "event_types": ["token.created"], "group_window_secs": 0 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let channel = format!(
        "/api/notifications/channels/{}",
        created["channel_id"].as_str().unwrap()
    );
    send(hub.request(Method::POST, &format!("{channel}/test"), Some(t))).await;
    hub.send_json(Method::PUT, &channel, t, json!({ "retry_max": 2 }))
        .await;
    exercise_everything(&hub).await;
    exercise_the_fleet(&hub).await;
    eventually(Duration::from_secs(10), "webhook.disabled", || async {
        (!hub.events("event_type=webhook.disabled").await.is_empty()).then_some(())
    })
    .await;
    send(hub.request(Method::DELETE, &webhook, Some(t))).await;
    eventually(
        Duration::from_secs(10),
        "notification_channel.disabled",
        || async {
            (!hub
                .events("event_type=notification_channel.disabled")
                .await
                .is_empty())
            .then_some(())
        },
    )
    .await;
    send(hub.request(Method::DELETE, &channel, Some(t))).await;
    eventually(Duration::from_secs(10), "a plugin.error event", || async {
        (!hub.events("event_type=plugin.error").await.is_empty()).then_some(())
    })
    .await;
    let (status, catalog) = hub.get("/api/events/types", &hub.admin_token).await;
    assert_eq!(status, StatusCode::OK);
    let listed: BTreeSet<String> = catalog["event_types"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(catalog["count"], listed.len());
    let logs = hub.events("limit=1000").await;
    let emitted: BTreeSet<String> = logs
        .iter()
        .map(|e| e["event_type"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(listed, emitted, "catalog and emitted types differ");

    let keys = EVENT_KEYS;
    for e in &logs {
        let obj = e.as_object().unwrap();
        let got: BTreeSet<&str> = obj.keys().map(String::as_str).collect();
        assert_eq!(got, keys.iter().copied().collect::<BTreeSet<&str>>(), "{e}");
        assert_eq!(
            e["action"],
            e["event_type"].as_str().unwrap().replace('.', "_")
        );
        assert!(e["meta"].is_object());
        assert!(chrono::DateTime::parse_from_rfc3339(e["timestamp"].as_str().unwrap()).is_ok());
        assert!(uuid::Uuid::parse_str(e["event_id"].as_str().unwrap()).is_ok());
    }
}

#[tokio::test]
async fn the_audit_log_filters_and_pages() {
    let hub = TestHub::start().await;
    exercise_everything(&hub).await;
    let t = &hub.admin_token;
    let (_, all) = hub.get("/api/audit-logs", t).await;
    let total = all["total"].as_u64().unwrap();
    assert_eq!(all["count"].as_u64().unwrap(), total);
    assert_eq!(
        (all["limit"].as_u64(), all["offset"].as_u64()),
        (Some(100), Some(0))
    );

    // Newest first, and pages tile the whole log without overlap.
    let mut paged: Vec<Value> = Vec::new();
    for offset in (0..total).step_by(3) {
        let (_, page) = hub
            .get(&format!("/api/audit-logs?limit=3&offset={offset}"), t)
            .await;
        assert_eq!(page["total"], total);
        paged.extend(page["logs"].as_array().unwrap().iter().cloned());
    }
    assert_eq!(Value::Array(paged), all["logs"]);

    let by_type = hub.events("event_type=user.created").await;
    assert!(by_type.iter().all(|e| e["event_type"] == "user.created") && by_type.len() == 2);
    let erin = hub.events("username=erin").await;
    assert!(!erin.is_empty() && erin.iter().all(|e| e["username"] == "erin"));
    let warnings = hub.events("severity=warning").await;
    assert!(warnings.iter().all(|e| e["severity"] == "warning") && !warnings.is_empty());

    let newest = all["logs"][0]["timestamp"].as_str().unwrap().to_string();
    let future = hub.events("since=2999-01-01T00:00:00Z").await;
    assert!(future.is_empty());
    let until_now = hub
        .events(&format!("until={}", newest.replace('+', "%2B")))
        .await;
    assert_eq!(until_now.len() as u64, total);
    let target = all["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["event_type"] == "user.deleted")
        .unwrap();
    let about = hub
        .events(&format!(
            "target_type=user&target_id={}",
            target["target_id"].as_str().unwrap()
        ))
        .await;
    assert!(about.len() >= 3, "created, updated, deleted: {about:?}");
}

#[tokio::test]
async fn recent_activity_is_for_everyone_and_the_audit_log_for_admins_and_auditors() {
    let hub = TestHub::start().await;
    let viewer = hub.token_for_role("viewer").await;
    let auditor = hub.token_for_role("auditor").await;
    let (status, recent) = hub.get("/api/activity/recent?limit=2", &viewer).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(recent["count"], 2);
    assert_eq!(recent["activities"].as_array().unwrap().len(), 2);
    // The newest event is the auditor's login.
    assert_eq!(recent["activities"][0]["event_type"], "user.login");
    // Client addresses are audit data: hidden from viewers, shown to auditors.
    assert_eq!(recent["activities"][0]["ip"], Value::Null);
    assert_eq!(recent["activities"][0]["user_agent"], Value::Null);
    let (_, for_auditor) = hub.get("/api/activity/recent?limit=2", &auditor).await;
    assert_eq!(for_auditor["activities"][0]["ip"], "127.0.0.1");
    assert_error(
        &hub.get("/api/audit-logs", &viewer).await,
        StatusCode::FORBIDDEN,
        "audit log",
    );
    let (status, logs) = hub.get("/api/audit-logs", &auditor).await;
    assert_eq!(status, StatusCode::OK);
    assert!(logs["total"].as_u64().unwrap() >= 5);
}
