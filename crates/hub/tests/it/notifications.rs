//! Notification channels: each kind's request shape, e-mail over real SMTP, routing, grouping,
//! retries with a delivery log, validation and secrets.

use std::collections::BTreeSet;
use std::time::Duration;

use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::common::agent;
use crate::common::receiver::{Received, Receiver};
use crate::common::*;

const BOT_TOKEN: &str = "123456:AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw";

async fn loopback_hub() -> TestHub {
    TestHub::start_with(|c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.webhooks.retry_base_secs = 1;
        c.public_url = "https://mon.example.com".into();
    })
    .await
}

async fn create_channel(hub: &TestHub, body: Value) -> String {
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/notifications/channels",
            &hub.admin_token,
            body,
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    assert_eq!(created["success"], true);
    created["channel_id"].as_str().unwrap().to_string()
}

async fn test_channel(hub: &TestHub, id: &str) -> Value {
    let (status, outcome) = send(hub.request(
        Method::POST,
        &format!("/api/notifications/channels/{id}/test"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{outcome}");
    outcome
}

async fn deliveries(hub: &TestHub, id: &str) -> Vec<Value> {
    let (status, page) = hub
        .get(
            &format!("/api/notifications/channels/{id}/deliveries"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    page["deliveries"].as_array().unwrap().clone()
}

fn only_request_to(receiver: &Receiver, path: &str) -> Received {
    let got: Vec<Received> = receiver
        .received()
        .into_iter()
        .filter(|r| r.path == path)
        .collect();
    assert_eq!(got.len(), 1, "requests to {path}: {got:?}");
    got.into_iter().next().unwrap()
}

#[tokio::test]
async fn each_chat_kind_sends_the_request_its_service_documents() {
    let receiver = Receiver::start(&[]).await;
    let hub = loopback_hub().await;
    let base = receiver.base();
    let kinds = [
        (
            "slack",
            json!({ "url": format!("{base}/services/T0/B0/slacksecret") }),
        ),
        (
            "discord",
            json!({ "url": format!("{base}/api/webhooks/42/discordsecret") }),
        ),
        (
            "teams",
            json!({ "url": format!("{base}/workflows/teamssecret/invoke") }),
        ),
        (
            "telegram",
            json!({ "bot_token": BOT_TOKEN, "chat_id": -1001234, "api_url": base }),
        ),
        (
            "ntfy",
            json!({ "server_url": base, "topic": "smon-alerts", "token": "tk_ntfysecret" }),
        ),
        (
            "webhook",
            json!({ "url": format!("{base}/generic"), "secret": "generic-secret" }),
        ),
    ];
    let mut ids = Vec::new();
    for (kind, config) in kinds {
        let id = create_channel(
            &hub,
            json!({ "name": format!("{kind} ops"), "kind": kind, "config": config }),
        )
        .await;
        let outcome = test_channel(&hub, &id).await;
        assert_eq!(outcome["success"], true, "{kind}: {outcome}");
        assert_eq!(outcome["status_code"], 200);
        let log = deliveries(&hub, &id).await;
        assert_eq!(log.len(), 1, "{kind}");
        assert_eq!(log[0]["status"], "success");
        assert_eq!(log[0]["event_type"], "notification_channel.test");
        ids.push(id);
    }
    let subject = "Test notification from Server Monitor";

    let slack = only_request_to(&receiver, "/services/T0/B0/slacksecret");
    assert_eq!(slack.header("content-type"), "application/json");
    let text = slack.json()["text"].as_str().unwrap().to_string();
    assert!(text.starts_with(&format!("*{subject}*\n")), "{text}");
    assert!(
        text.contains("notification channel slack ops works"),
        "{text}"
    );

    let discord = only_request_to(&receiver, "/api/webhooks/42/discordsecret").json();
    let content = discord["content"].as_str().unwrap();
    assert!(
        content.starts_with(&format!("**{subject}**\n")),
        "{content}"
    );
    assert_eq!(discord["allowed_mentions"], json!({ "parse": [] }));

    let teams = only_request_to(&receiver, "/workflows/teamssecret/invoke").json();
    assert_eq!(teams["type"], "message");
    let attachment = &teams["attachments"][0];
    assert_eq!(
        attachment["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(attachment["content"]["type"], "AdaptiveCard");
    assert_eq!(attachment["content"]["body"][0]["type"], "TextBlock");
    assert_eq!(attachment["content"]["body"][0]["text"], subject);

    let telegram = only_request_to(&receiver, &format!("/bot{BOT_TOKEN}/sendMessage")).json();
    assert_eq!(telegram["chat_id"], "-1001234");
    assert!(
        telegram["text"]
            .as_str()
            .unwrap()
            .starts_with(&format!("{subject}\n\n")),
        "{telegram}"
    );

    let ntfy = only_request_to(&receiver, "/");
    assert_eq!(ntfy.header("authorization"), "Bearer tk_ntfysecret");
    let body = ntfy.json();
    assert_eq!(body["topic"], "smon-alerts");
    assert_eq!(body["title"], subject);
    assert_eq!(body["priority"], 3);
    assert!(body["message"].as_str().unwrap().contains("ntfy ops works"));

    let generic = only_request_to(&receiver, "/generic");
    let mut mac = Hmac::<Sha256>::new_from_slice(b"generic-secret").unwrap();
    mac.update(&generic.body);
    assert_eq!(
        generic.header("x-sm-signature"),
        format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
    );
    let body = generic.json();
    assert_eq!(body["title"], subject);
    assert_eq!(body["count"], 1);
    assert_eq!(body["events"][0]["event_type"], "notification_channel.test");
    assert_eq!(generic.header("webhook-id"), body["events"][0]["event_id"]);

    // No secret comes back: not the paths that carry tokens, not the bot token, not the ntfy
    // token, not the signing secret.
    let (status, list) = hub
        .get("/api/notifications/channels", &hub.admin_token)
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["count"], 6);
    let text = list.to_string();
    for secret in [
        "slacksecret",
        "discordsecret",
        "teamssecret",
        "AAHdqTcvCH1vGWJxfSeofSAs0K5PALDsaw",
        "tk_ntfysecret",
        "generic-secret",
    ] {
        assert!(!text.contains(secret), "{secret} leaked: {text}");
    }
    let slack_view = &list["channels"][0];
    assert_eq!(slack_view["kind"], "slack");
    assert_eq!(
        slack_view["config"]["url"],
        format!("{base}/…"),
        "{slack_view}"
    );
    assert_eq!(list["channels"][4]["config"]["has_token"], true);
}

#[tokio::test]
async fn secrets_are_sealed_at_rest_and_an_edit_without_them_keeps_them() {
    let receiver = Receiver::start(&[]).await;
    let hub = loopback_hub().await;
    let id = create_channel(
        &hub,
        json!({ "name": "tg", "kind": "telegram",
                "config": { "bot_token": BOT_TOKEN, "chat_id": "-1", "api_url": receiver.base() } }),
    )
    .await;
    let (status, updated) = hub
        .send_json(
            Method::PUT,
            &format!("/api/notifications/channels/{id}"),
            &hub.admin_token,
            json!({ "config": { "chat_id": "@smon_ops", "api_url": receiver.base() } }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(updated["channel"]["config"]["chat_id"], "@smon_ops");
    assert!(!updated.to_string().contains("AAHdqTcv"));
    assert_eq!(test_channel(&hub, &id).await["success"], true);
    let sent = only_request_to(&receiver, &format!("/bot{BOT_TOKEN}/sendMessage"));
    assert_eq!(sent.json()["chat_id"], "@smon_ops");

    let dir = hub.stop().await;
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir.path()).unwrap() {
        let path = entry.unwrap().path();
        if path.is_file()
            && std::fs::read(&path)
                .unwrap()
                .windows(20)
                .any(|w| w == &BOT_TOKEN.as_bytes()[7..27])
        {
            found.push(path);
        }
    }
    assert!(found.is_empty(), "bot token in plain text in {found:?}");
}

#[tokio::test]
async fn bad_configuration_is_refused_naming_the_field_and_nothing_is_created() {
    let hub = loopback_hub().await;
    let email = |to: Value| {
        json!({ "name": "mail", "kind": "email",
                "config": { "host": "smtp.example.com", "from": "smon@example.com", "to": to } })
    };
    let cases = [
        (
            email(json!(["ops@example.com", "not an address"])),
            "config.to[1]",
        ),
        (
            json!({ "name": "mail", "kind": "email",
                    "config": { "host": "smtp.example.com", "from": "nobody", "to": ["a@example.com"] } }),
            "config.from",
        ),
        (
            json!({ "name": "mail", "kind": "email",
                    "config": { "host": "smtp.example.com", "tls": "none", "from": "a@example.com", "to": ["a@example.com"] } }),
            "config.tls",
        ),
        (
            json!({ "name": "s", "kind": "slack", "config": { "url": "http://hooks.slack.com/services/x" } }),
            "config.url",
        ),
        (
            json!({ "name": "s", "kind": "slack", "config": { "url": "https://10.0.0.1/services/x" } }),
            "config.url",
        ),
        (
            json!({ "name": "t", "kind": "telegram", "config": { "chat_id": "1" } }),
            "config.bot_token",
        ),
        (
            json!({ "name": "t", "kind": "telegram", "config": { "bot_token": "nonsense", "chat_id": "1" } }),
            "config.bot_token",
        ),
        (
            json!({ "name": "n", "kind": "ntfy", "config": { "server_url": "https://ntfy.sh" } }),
            "config.topic",
        ),
        (
            json!({ "name": "d", "kind": "discord", "config": { "url": "https://discord.com/api/webhooks/1/x", "colour": 1 } }),
            "config.colour",
        ),
        (
            json!({ "name": "p", "kind": "pager", "config": {} }),
            "kind",
        ),
        (
            json!({ "name": "d", "kind": "discord", "config": { "url": "https://discord.com/api/webhooks/1/x" },
                    "min_severity": "loud" }),
            "min_severity",
        ),
        (
            json!({ "name": "d", "kind": "discord", "config": { "url": "https://discord.com/api/webhooks/1/x" },
                    "event_types": ["alert.exploded"] }),
            "event_types",
        ),
    ];
    for (body, field) in cases {
        let got = hub
            .send_json(
                Method::POST,
                "/api/notifications/channels",
                &hub.admin_token,
                body.clone(),
            )
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, field);
        assert!(
            got.1["error"].as_str().unwrap().starts_with(field),
            "{body} → {}",
            got.1
        );
    }
    let (_, list) = hub
        .get("/api/notifications/channels", &hub.admin_token)
        .await;
    assert_eq!(list["count"], 0, "{list}");
    assert!(
        hub.events("event_type=notification_channel.created")
            .await
            .is_empty()
    );
}

/// A rule firing at once above 50 % CPU.
async fn cpu_rule(hub: &TestHub, extra: Value) -> String {
    let mut body = json!({ "name": "cpu-high", "metric": "cpu", "threshold": 50, "for": 0,
                           "severity": "critical" });
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (status, created) = hub
        .send_json(Method::POST, "/api/alerts/rules", &hub.admin_token, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    created["rule_id"].as_str().unwrap().to_string()
}

async fn report_cpu(hub: &TestHub, agent_token: &str, cpu: f64) {
    let sample = agent::sample(chrono::Utc::now(), cpu);
    let (status, body) = hub
        .post_report(agent_token, &agent::report(vec![sample], None))
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
}

#[tokio::test]
async fn an_alert_reaches_its_channel_with_the_facts_and_its_resolution_says_how_long_it_fired() {
    let receiver = Receiver::start(&[]).await;
    let hub = loopback_hub().await;
    create_channel(
        &hub,
        json!({ "name": "ops", "kind": "slack", "group_window_secs": 0,
                "event_types": ["alert.triggered", "alert.resolved"],
                "config": { "url": format!("{}/services/ops", receiver.base()) } }),
    )
    .await;
    cpu_rule(&hub, json!({})).await;
    let (server, token) = hub.create_server("web-<1>", &["prod"]).await;
    report_cpu(&hub, &token, 97.5).await;
    let fired = eventually(Duration::from_secs(10), "the alert message", || async {
        receiver.received().into_iter().next()
    })
    .await;
    let text = fired.json()["text"].as_str().unwrap().to_string();
    assert_eq!(
        text,
        format!(
            "*[critical] cpu-high on web-&lt;1&gt;*\ncpu-high is firing on web-&lt;1&gt;: cpu is 97.5 % (&gt; 50 % for 0 s).\nhttps://mon.example.com/servers/{server}"
        )
    );
    report_cpu(&hub, &token, 10.0).await;
    let resolved = eventually(
        Duration::from_secs(10),
        "the resolution message",
        || async { receiver.received().get(1).cloned() },
    )
    .await;
    let text = resolved.json()["text"].as_str().unwrap().to_string();
    assert!(
        text.starts_with("*[resolved] cpu-high on web-&lt;1&gt;*\ncpu-high resolved on web-&lt;1&gt; after firing for "),
        "{text}"
    );
    assert!(text.contains("cpu is 10 % (recovered)"), "{text}");
}

#[tokio::test]
async fn fifty_alerts_in_one_window_arrive_as_a_few_messages() {
    let receiver = Receiver::start(&[]).await;
    let hub = loopback_hub().await;
    let channel = create_channel(
        &hub,
        json!({ "name": "digest", "kind": "webhook", "group_window_secs": 3,
                "event_types": ["alert.triggered"],
                "config": { "url": format!("{}/digest", receiver.base()) } }),
    )
    .await;
    cpu_rule(&hub, json!({})).await;
    let mut servers = Vec::new();
    for i in 0..50 {
        servers.push(hub.create_server(&format!("node-{i:02}"), &[]).await);
    }
    for (_, token) in &servers {
        report_cpu(&hub, token, 95.0).await;
    }
    let messages = eventually(Duration::from_secs(20), "all 50 alerts sent", || async {
        let got: Vec<Value> = receiver.received().iter().map(Received::json).collect();
        let events: u64 = got.iter().map(|m| m["count"].as_u64().unwrap()).sum();
        (events == 50).then_some(got)
    })
    .await;
    assert!(
        messages.len() <= 3,
        "{} messages for 50 alerts",
        messages.len()
    );
    let named: BTreeSet<String> = messages
        .iter()
        .flat_map(|m| m["events"].as_array().unwrap().clone())
        .map(|e| e["server_name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named.len(), 50, "every server appears once");
    let first = &messages[0];
    assert!(
        first["title"].as_str().unwrap().contains("more)"),
        "{first}"
    );
    // The attempt is logged just after the receiver answers.
    eventually(Duration::from_secs(5), "the delivery log", || async {
        let logged = deliveries(&hub, &channel).await;
        (logged.len() == messages.len() && logged.iter().all(|d| d["status"] == "success"))
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_failing_channel_is_retried_and_its_failures_show_in_its_delivery_log() {
    let receiver = Receiver::start(&[500, 503]).await;
    let hub = loopback_hub().await;
    let channel = create_channel(
        &hub,
        json!({ "name": "flaky", "kind": "discord", "group_window_secs": 0,
                "event_types": ["server.created"],
                "config": { "url": format!("{}/api/webhooks/1/x", receiver.base()) } }),
    )
    .await;
    hub.create_server("db-1", &[]).await;
    let log = eventually(
        Duration::from_secs(20),
        "a success after two failures",
        || async {
            let log = deliveries(&hub, &channel).await;
            (log.first().is_some_and(|d| d["status"] == "success")).then_some(log)
        },
    )
    .await;
    let summary: Vec<(String, u64, u64)> = log
        .iter()
        .rev()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_string(),
                d["attempt"].as_u64().unwrap(),
                d["status_code"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("retrying".to_string(), 1, 500),
            ("retrying".to_string(), 2, 503),
            ("success".to_string(), 3, 200)
        ]
    );
    assert_eq!(log[2]["error"], "HTTP 500");
    let bodies: Vec<Value> = receiver.received().iter().map(Received::json).collect();
    assert_eq!(bodies.len(), 3);
    assert!(
        bodies.iter().all(|b| b == &bodies[0]),
        "the same message each time"
    );
    assert!(bodies[0]["content"].as_str().unwrap().contains("db-1"));
}

#[tokio::test]
async fn a_rule_that_names_channels_notifies_only_those() {
    let named = Receiver::start(&[]).await;
    let other = Receiver::start(&[]).await;
    let hub = loopback_hub().await;
    let named_id = create_channel(
        &hub,
        json!({ "name": "named", "kind": "slack", "group_window_secs": 0,
                "event_types": ["alert.triggered", "alert.resolved"],
                "config": { "url": format!("{}/services/named", named.base()) } }),
    )
    .await;
    let other_id = create_channel(
        &hub,
        json!({ "name": "other", "kind": "slack", "group_window_secs": 0,
                "event_types": ["alert.triggered", "alert.resolved"],
                "config": { "url": format!("{}/services/other", other.base()) } }),
    )
    .await;
    let refused = hub
        .send_json(
            Method::POST,
            "/api/alerts/rules",
            &hub.admin_token,
            json!({ "name": "x", "metric": "cpu", "threshold": 50, "channels": ["nope"] }),
        )
        .await;
    assert_error(&refused, StatusCode::BAD_REQUEST, "channels");
    let rule = cpu_rule(&hub, json!({ "channels": [named_id] })).await;
    let (_, token) = hub.create_server("api-1", &[]).await;
    report_cpu(&hub, &token, 99.0).await;
    eventually(
        Duration::from_secs(10),
        "the named channel's message",
        || async { named.received().into_iter().next() },
    )
    .await;
    // Both channels are routed in the same dispatcher pass: the other one got nothing queued.
    let (_, view) = hub
        .get(
            &format!("/api/notifications/channels/{other_id}"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(view["pending_deliveries"], 0);
    assert!(deliveries(&hub, &other_id).await.is_empty());
    assert!(other.received().is_empty());

    // The named channel cannot be deleted from under its rule.
    let channel = format!("/api/notifications/channels/{named_id}");
    let refused = send(hub.request(Method::DELETE, &channel, Some(&hub.admin_token))).await;
    assert_error(&refused, StatusCode::CONFLICT, "cpu-high");
    // Deleting the rule resolves its alert: the resolution goes to the named channel only,
    // though the rule is gone by the time the event is routed.
    let (status, _) = send(hub.request(
        Method::DELETE,
        &format!("/api/alerts/rules/{rule}"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    let resolved = eventually(Duration::from_secs(10), "the resolution", || async {
        named.received().get(1).cloned()
    })
    .await;
    let text = resolved.json()["text"].as_str().unwrap().to_string();
    assert!(text.contains("[resolved] cpu-high on api-1"), "{text}");
    assert!(text.contains("rule deleted"), "{text}");
    let (_, view) = hub
        .get(
            &format!("/api/notifications/channels/{other_id}"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(
        view["pending_deliveries"], 0,
        "nothing queued for the other channel"
    );
    assert!(deliveries(&hub, &other_id).await.is_empty());
    let (status, _) = send(hub.request(Method::DELETE, &channel, Some(&hub.admin_token))).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn severity_and_tag_filters_pick_the_events_a_channel_gets() {
    let receiver = Receiver::start(&[]).await;
    let hub = loopback_hub().await;
    create_channel(
        &hub,
        json!({ "name": "prod-critical", "kind": "slack", "group_window_secs": 0,
                "min_severity": "error", "tags": ["Prod"],
                "config": { "url": format!("{}/services/p", receiver.base()) } }),
    )
    .await;
    cpu_rule(&hub, json!({})).await;
    let (_, staging) = hub.create_server("staging-1", &["staging"]).await;
    let (_, prod) = hub.create_server("prod-1", &["prod"]).await;
    report_cpu(&hub, &staging, 99.0).await;
    report_cpu(&hub, &prod, 99.0).await;
    let first = eventually(Duration::from_secs(10), "the prod alert", || async {
        receiver.received().into_iter().next()
    })
    .await;
    assert!(first.json()["text"].as_str().unwrap().contains("prod-1"));
    // The resolution is info, but it ends a critical alert: it passes the severity filter.
    report_cpu(&hub, &prod, 1.0).await;
    let second = eventually(Duration::from_secs(10), "the prod resolution", || async {
        receiver.received().get(1).cloned()
    })
    .await;
    assert!(
        second.json()["text"]
            .as_str()
            .unwrap()
            .contains("[resolved] cpu-high on prod-1")
    );
    assert_eq!(
        hub.events("event_type=alert.triggered").await.len(),
        2,
        "staging fired too, and was filtered out"
    );
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| !r.json()["text"].as_str().unwrap().contains("staging")),
    );
}

/// An SMTP server on loopback: Python's aiosmtpd writing each message to a maildir.
struct SmtpServer {
    child: std::process::Child,
    port: u16,
    maildir: tempfile::TempDir,
}

impl SmtpServer {
    fn start() -> SmtpServer {
        Self::start_with(&[])
    }

    /// With more aiosmtpd options (TLS certificates).
    fn start_with(options: &[&str]) -> SmtpServer {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let maildir = tempfile::tempdir().unwrap();
        let child = std::process::Command::new("python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(options)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(maildir.path().join("mail"))
            .spawn()
            .expect("python3 -m aiosmtpd (pip install aiosmtpd)");
        let deadline = std::time::Instant::now() + Duration::from_secs(15);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "aiosmtpd did not start (pip install aiosmtpd)"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        SmtpServer {
            child,
            port,
            maildir,
        }
    }

    fn messages(&self) -> Vec<String> {
        let new = self.maildir.path().join("mail").join("new");
        let Ok(entries) = std::fs::read_dir(new) else {
            return Vec::new();
        };
        entries
            .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
            .collect()
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test]
#[ignore = "needs Python's aiosmtpd (pip install aiosmtpd): run by .ci/run"]
async fn an_email_channel_delivers_over_smtp_with_subject_and_body() {
    let smtp = SmtpServer::start();
    let hub = loopback_hub().await;
    let id = create_channel(
        &hub,
        json!({ "name": "mail", "kind": "email", "group_window_secs": 0,
                "event_types": ["server.created"],
                "config": { "host": "127.0.0.1", "port": smtp.port, "tls": "none",
                            "from": "Server Monitor <smon@example.com>",
                            "to": ["ops@example.com", "oncall@example.com"] } }),
    )
    .await;
    let outcome = test_channel(&hub, &id).await;
    assert_eq!(outcome["success"], true, "{outcome}");
    assert_eq!(outcome["status_code"], 250);
    hub.create_server("mail-target", &[]).await;
    let messages = eventually(Duration::from_secs(15), "two e-mails", || async {
        let m = smtp.messages();
        (m.len() == 2).then_some(m)
    })
    .await;
    let test = messages
        .iter()
        .find(|m| m.contains("Subject: Test notification from Server Monitor"))
        .expect("the test e-mail");
    assert!(
        test.contains(r#"From: "Server Monitor" <smon@example.com>"#),
        "{test}"
    );
    assert!(test.contains("ops@example.com") && test.contains("oncall@example.com"));
    assert!(test.contains("notification channel mail works"), "{test}");
    let routed = messages
        .iter()
        .find(|m| m.contains("Subject: [info] server.created mail-target"))
        .expect("the routed e-mail");
    assert!(routed.contains("server.created at "), "{routed}");
    eventually(Duration::from_secs(5), "both sends logged", || async {
        let log = deliveries(&hub, &id).await;
        (log.len() == 2
            && log
                .iter()
                .all(|d| d["status"] == "success" && d["status_code"] == 250))
        .then_some(())
    })
    .await;
}

#[tokio::test]
#[ignore = "needs Python's aiosmtpd (pip install aiosmtpd) and openssl: run by .ci/run"]
async fn starttls_and_implicit_tls_verify_the_server_certificate_and_send_nothing_otherwise() {
    // A self-signed certificate: no public CA vouches for it, so the hub must refuse it.
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = (certs.path().join("cert.pem"), certs.path().join("key.pem"));
    let made = std::process::Command::new("openssl")
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
        ])
        .args(["-subj", "/CN=127.0.0.1", "-keyout"])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .expect("openssl");
    assert!(made.status.success(), "{made:?}");
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let starttls = SmtpServer::start_with(&["--tlscert", cert, "--tlskey", key]);
    let implicit = SmtpServer::start_with(&["--smtpscert", cert, "--smtpskey", key]);
    let hub = loopback_hub().await;
    for (tls, server) in [("starttls", &starttls), ("implicit", &implicit)] {
        let id = create_channel(
            &hub,
            json!({ "name": format!("mail {tls}"), "kind": "email",
                    "config": { "host": "127.0.0.1", "port": server.port, "tls": tls,
                                "username": "smon", "password": "hunter2",
                                "from": "smon@example.com", "to": ["ops@example.com"] } }),
        )
        .await;
        let outcome = test_channel(&hub, &id).await;
        assert_eq!(outcome["success"], false, "{tls}: {outcome}");
        let error = outcome["error"].as_str().unwrap();
        assert!(error.contains("certificate"), "{tls}: {error}");
        assert!(!error.contains("hunter2"));
    }
    assert!(starttls.messages().is_empty() && implicit.messages().is_empty());
}
