//! Managed webhooks against real receivers on loopback: API shapes and validation, signatures
//! checked by an independent implementation, retry and disable policy, SSRF, durability.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::process::*;
use crate::common::receiver::{Received, Receiver, Reply};
use crate::common::*;

/// A hub whose SSRF guard lets loopback through and whose retries take about a second.
async fn hub() -> TestHub {
    TestHub::start_with(|c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.webhooks.retry_base_secs = 1;
        c.webhooks.retry_cap_secs = 2;
    })
    .await
}

/// Create a webhook (as admin) and return its id and the whole answer.
async fn create(hub: &TestHub, body: Value) -> (String, Value) {
    let (status, answer) = hub
        .send_json(Method::POST, "/api/webhooks", &hub.admin_token, body)
        .await;
    assert_eq!(status, StatusCode::CREATED, "{answer}");
    (answer["webhook_id"].as_str().unwrap().to_string(), answer)
}

async fn wait_for(receiver: &Receiver, n: usize, within: Duration) -> Vec<Received> {
    eventually(within, &format!("{n} requests at the receiver"), || async {
        let got = receiver.received();
        (got.len() >= n).then_some(got)
    })
    .await
}

async fn deliveries(hub: &TestHub, id: &str) -> Vec<Value> {
    let (status, page) = hub
        .get(
            &format!("/api/webhooks/{id}/deliveries?limit=1000"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    let mut rows = page["deliveries"].as_array().unwrap().clone();
    rows.reverse(); // oldest first
    rows
}

/// Check both signatures of a request with Python's standard library: an implementation that
/// shares nothing with the hub's.
fn verify_independently(r: &Received, secrets: &[&str]) -> Value {
    const VERIFY: &str = r#"
import base64, hashlib, hmac, json, sys
req = json.load(sys.stdin)
body = base64.b64decode(req["body"])
h = req["headers"]
out = {}
newest = req["secrets"][0]
expected = "sha256=" + hmac.new(newest.encode(), body, hashlib.sha256).hexdigest()
out["sm"] = hmac.compare_digest(expected, h["x-sm-signature"])
signed = f'{h["webhook-id"]}.{h["webhook-timestamp"]}.'.encode() + body
given = [s.split(",", 1)[1] for s in h["webhook-signature"].split(" ") if s.startswith("v1,")]
out["standard"] = []
for secret in req["secrets"]:
    key = base64.b64decode(secret[len("whsec_"):]) if secret.startswith("whsec_") else secret.encode()
    mac = base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()
    out["standard"].append(any(hmac.compare_digest(mac, g) for g in given))
print(json.dumps(out))
"#;
    let headers: BTreeMap<String, String> = r
        .headers
        .iter()
        .map(|(k, v)| (k.as_str().to_string(), v.to_str().unwrap().to_string()))
        .collect();
    use base64::Engine;
    let input = json!({
        "body": base64::engine::general_purpose::STANDARD.encode(&r.body),
        "headers": headers,
        "secrets": secrets,
    });
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(VERIFY)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.to_string().as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "verifier failed");
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test]
async fn the_api_has_the_documented_shapes_and_never_returns_a_secret() {
    let hub = hub().await;
    let t = &hub.admin_token;
    let (id, created) = create(
        &hub,
        json!({ "name": "ops", "url": "https://hooks.example.com/x", "generate_secret": true, "event_types": ["user.created"] }),
    )
    .await;
    assert_eq!(created["success"], true);
    let secret = created["secret"].as_str().unwrap().to_string();
    assert!(secret.starts_with("whsec_"), "{secret}");
    let w = &created["webhook"];
    assert_eq!(
        (
            w["enabled"].as_bool(),
            w["retry_max"].as_u64(),
            w["timeout"].as_u64()
        ),
        (Some(true), Some(3), Some(10))
    );
    assert_eq!(w["event_types"], json!(["user.created"]));
    assert_eq!(w["created_by"], "admin");

    let (status, list) = hub.get("/api/webhooks", t).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 1);
    let listed = &list["webhooks"][0];
    assert_eq!(listed["has_secret"], true);
    assert!(
        listed["secret"]
            .as_str()
            .unwrap()
            .ends_with(&secret[secret.len() - 4..])
    );
    for path in [
        "/api/webhooks".to_string(),
        format!("/api/webhooks/{id}"),
        "/api/audit-logs?limit=1000".into(),
    ] {
        let (_, body) = hub.get(&path, t).await;
        assert!(
            !body.to_string().contains(&secret[6..]),
            "{path} leaks the secret"
        );
    }
    // The database keeps it sealed: on SQLite not a byte of it is in the files (WAL too).
    let needle = &secret.as_bytes()[6..];
    if hub.postgres_url().is_none() {
        let db = std::fs::read(hub.data_dir().join("smon.db")).unwrap();
        let wal = std::fs::read(hub.data_dir().join("smon.db-wal")).unwrap_or_default();
        assert!(
            !db.windows(needle.len()).any(|w| w == needle)
                && !wal.windows(needle.len()).any(|w| w == needle)
        );
    }
    let stored = hub
        .db_texts("SELECT secret FROM webhooks WHERE secret IS NOT NULL")
        .await;
    assert!(stored.iter().all(|s| s.starts_with("v1:")), "{stored:?}");
    let needle = std::str::from_utf8(needle).unwrap();
    assert!(!stored.iter().any(|s| s.contains(needle)));

    // Partial update keeps what is not named; enabled is a boolean.
    let (status, updated) = hub
        .send_json(
            Method::PUT,
            &format!("/api/webhooks/{id}"),
            t,
            json!({ "enabled": false }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{updated}");
    assert_eq!(
        (
            updated["webhook"]["enabled"].as_bool(),
            updated["webhook"]["has_secret"].as_bool()
        ),
        (Some(false), Some(true))
    );
    assert_eq!(updated["webhook"]["name"], "ops");
    let bad = hub
        .send_json(
            Method::PUT,
            &format!("/api/webhooks/{id}"),
            t,
            json!({ "enabled": "yes" }),
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "enabled");
    let unknown = hub
        .send_json(
            Method::PUT,
            &format!("/api/webhooks/{id}"),
            t,
            json!({ "colour": "red" }),
        )
        .await;
    assert_error(&unknown, StatusCode::BAD_REQUEST, "colour");
    let (_, cleared) = hub
        .send_json(
            Method::PUT,
            &format!("/api/webhooks/{id}"),
            t,
            json!({ "secret": "", "event_types": null }),
        )
        .await;
    assert_eq!(
        (
            cleared["webhook"]["has_secret"].as_bool(),
            &cleared["webhook"]["secret"]
        ),
        (Some(false), &Value::Null)
    );
    assert_eq!(cleared["webhook"]["event_types"], Value::Null);

    let (status, _) =
        send(hub.request(Method::DELETE, &format!("/api/webhooks/{id}"), Some(t))).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        hub.get(&format!("/api/webhooks/{id}"), t).await.0,
        StatusCode::NOT_FOUND
    );
    for ty in ["webhook.created", "webhook.updated", "webhook.deleted"] {
        assert!(
            !hub.events(&format!("event_type={ty}")).await.is_empty(),
            "{ty}"
        );
    }
}

#[tokio::test]
async fn bad_webhooks_are_refused_with_the_field_named_and_nothing_written() {
    // No SSRF exemptions; room for more attempts than the per-user creation limit allows.
    let hub = TestHub::start_with(|c| c.rate_limits.webhook_create_per_minute = 1000).await;
    let base = json!({ "name": "x", "url": "https://hooks.example.com/" });
    let with = |k: &str, v: Value| {
        let mut b = base.clone();
        b[k] = v;
        b
    };
    let mut cases = vec![
        (with("name", json!("")), "name"),
        (with("name", json!("n".repeat(101))), "name"),
        (
            with(
                "url",
                json!(format!("https://example.com/{}", "a".repeat(2040))),
            ),
            "2048",
        ),
        (
            with("event_types", json!(["server.exploded"])),
            "user.created",
        ),
        (with("retry_max", json!(0)), "retry_max"),
        (with("retry_max", json!(11)), "retry_max"),
        (with("timeout", json!(0)), "timeout"),
        (with("timeout", json!(31)), "timeout"),
        (with("secret", json!("whsec_notbase64!")), "secret"),
        (with("enabled", json!("true")), "enabled"),
        (with("surprise", json!(1)), "surprise"),
    ];
    let refused_urls = [
        "http://localhost/",
        "http://localhost./",
        "http://127.0.0.1/",
        "http://127.1/",
        "http://2130706433/",
        "http://0x7f000001/",
        "http://017700000001/",
        "http://[::1]/",
        "http://[::ffff:127.0.0.1]/",
        "http://169.254.169.254/latest/meta-data/",
        "http://10.0.0.1/",
        "http://172.16.0.1/",
        "http://192.168.1.1/",
        "http://100.64.0.1/",
        "http://0.0.0.0/",
        "http://[fd00::1]/",
        "http://[fe80::1]/",
        "file:///etc/passwd",
        "gopher://example.com/",
        "ftp://example.com/",
        "http://printer.local/",
    ];
    for url in refused_urls {
        cases.push((with("url", json!(url)), "url"));
    }
    for (body, field) in cases {
        let got = hub
            .send_json(
                Method::POST,
                "/api/webhooks",
                &hub.admin_token,
                body.clone(),
            )
            .await;
        assert_error(&got, StatusCode::BAD_REQUEST, field);
    }
    let (_, list) = hub.get("/api/webhooks", &hub.admin_token).await;
    assert_eq!(list["count"], 0);
}

#[tokio::test]
async fn deliveries_are_signed_verifiably_and_filtered_by_event_type() {
    let receiver = Receiver::start(&[]).await;
    let hub = hub().await;
    let (id, created) = create(
        &hub,
        json!({ "name": "r", "url": receiver.url(), "generate_secret": true, "event_types": ["token.created"] }),
    )
    .await;
    let secret = created["secret"].as_str().unwrap().to_string();
    hub.create_user("not-delivered", "viewer").await; // user.created: filtered out
    hub.make_token_events(2).await;
    let got = wait_for(&receiver, 2, Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(
        receiver.received().len(),
        2,
        "only token.created is delivered"
    );
    for r in &got {
        let event = r.json();
        assert_eq!(event["event_type"], "token.created");
        assert_eq!(r.header("webhook-id"), event["event_id"].as_str().unwrap());
        assert_eq!(
            r.header("x-sm-event-id"),
            event["event_id"].as_str().unwrap()
        );
        assert_eq!(r.header("x-sm-event-type"), "token.created");
        assert_eq!(r.header("content-type"), "application/json");
        assert!(r.header("user-agent").starts_with("ServerMonitor-Webhook/"));
        let ts: i64 = r.header("webhook-timestamp").parse().unwrap();
        assert!((chrono::Utc::now().timestamp() - ts).abs() < 60);
        let verdict = verify_independently(r, &[&secret]);
        assert_eq!(
            verdict,
            json!({ "sm": true, "standard": [true] }),
            "{verdict}"
        );
    }
    let log = eventually(Duration::from_secs(5), "two logged deliveries", || async {
        let log = deliveries(&hub, &id).await;
        (log.len() == 2).then_some(log)
    })
    .await;
    assert_eq!(log.len(), 2);
    assert!(
        log.iter()
            .all(|d| d["status"] == "success" && d["status_code"] == 200 && d["attempt"] == 1)
    );
    let (_, w) = hub
        .get(&format!("/api/webhooks/{id}"), &hub.admin_token)
        .await;
    assert!(w["last_triggered_at"].is_string());
}

#[tokio::test]
async fn a_500_is_retried_until_success_and_a_400_is_not() {
    let flaky = Receiver::start(&[500, 503]).await;
    let strict = Receiver::start(&[400]).await;
    let hub = hub().await;
    let (flaky_id, _) = create(
        &hub,
        json!({ "name": "flaky", "url": flaky.url(), "event_types": ["token.created"] }),
    )
    .await;
    let (strict_id, _) = create(
        &hub,
        json!({ "name": "strict", "url": strict.url(), "event_types": ["token.created"] }),
    )
    .await;
    hub.make_token_events(1).await;
    let got = wait_for(&flaky, 3, Duration::from_secs(15)).await;
    let ids: BTreeSet<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 1, "every attempt carries the same webhook-id");
    // Signed afresh at every attempt: each carries its own timestamp header.
    assert!(
        got.iter()
            .all(|r| r.header("webhook-timestamp").parse::<i64>().is_ok())
    );
    // The receiver answers before the hub records the attempt: wait for the third row.
    let log = eventually(Duration::from_secs(5), "three logged attempts", || async {
        let log = deliveries(&hub, &flaky_id).await;
        (log.len() == 3).then_some(log)
    })
    .await;
    let summary: Vec<(String, u64, u64)> = log
        .iter()
        .map(|d| {
            (
                d["status"].as_str().unwrap().to_string(),
                d["status_code"].as_u64().unwrap(),
                d["attempt"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        summary,
        [
            ("retrying".into(), 500, 1),
            ("retrying".into(), 503, 2),
            ("success".into(), 200, 3)
        ]
    );

    eventually(Duration::from_secs(5), "the 400 logged", || async {
        (deliveries(&hub, &strict_id).await.len() == 1).then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(strict.received().len(), 1, "a 400 is not retried");
    let log = deliveries(&hub, &strict_id).await;
    assert_eq!(
        (log[0]["status"].as_str(), log[0]["status_code"].as_u64()),
        (Some("failed"), Some(400))
    );
    let (_, w) = hub
        .get(&format!("/api/webhooks/{strict_id}"), &hub.admin_token)
        .await;
    assert_eq!(w["enabled"], true, "one failure does not disable");
    assert!(w["failing_since"].is_string());
}

#[tokio::test]
async fn retry_after_is_honoured_on_429() {
    let receiver = Receiver::scripted(
        vec![Reply::status(429).header("retry-after", "3")],
        Reply::status(200),
    )
    .await;
    let hub = TestHub::start_with(|c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.webhooks.retry_base_secs = 1;
        c.webhooks.retry_cap_secs = 10;
    })
    .await;
    create(
        &hub,
        json!({ "name": "busy", "url": receiver.url(), "event_types": ["token.created"] }),
    )
    .await;
    hub.make_token_events(1).await;
    let got = wait_for(&receiver, 2, Duration::from_secs(15)).await;
    let gap = got[1].at - got[0].at;
    // Without Retry-After the configured backoff would retry within about a second.
    assert!(gap >= Duration::from_millis(2900), "retried after {gap:?}");
}

#[tokio::test]
async fn a_410_disables_the_webhook_and_says_so() {
    let receiver = Receiver::start(&[410]).await;
    let hub = hub().await;
    let (id, _) = create(
        &hub,
        json!({ "name": "gone", "url": receiver.url(), "event_types": ["token.created"] }),
    )
    .await;
    hub.make_token_events(1).await;
    let event = eventually(Duration::from_secs(10), "webhook.disabled", || async {
        hub.events("event_type=webhook.disabled")
            .await
            .first()
            .cloned()
    })
    .await;
    assert_eq!(event["target_id"], id.as_str());
    assert_eq!(event["severity"], "error");
    let (_, w) = hub
        .get(&format!("/api/webhooks/{id}"), &hub.admin_token)
        .await;
    assert_eq!(w["enabled"], false);
    assert!(w["disabled_reason"].as_str().unwrap().contains("410"));
    hub.make_token_events(1).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        receiver.received().len(),
        1,
        "a disabled webhook gets nothing"
    );
    // Re-enabling forgives the failure run.
    let (_, back) = hub
        .send_json(
            Method::PUT,
            &format!("/api/webhooks/{id}"),
            &hub.admin_token,
            json!({ "enabled": true }),
        )
        .await;
    assert_eq!(
        (
            back["webhook"]["enabled"].as_bool(),
            &back["webhook"]["disabled_reason"]
        ),
        (Some(true), &Value::Null)
    );
}

#[tokio::test]
async fn a_webhook_failing_for_the_configured_period_is_disabled() {
    let receiver = Receiver::scripted(vec![], Reply::status(500)).await;
    let hub = TestHub::start_with(|c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.webhooks.retry_base_secs = 1;
        c.webhooks.retry_cap_secs = 1;
        c.webhooks.disable_after_secs = 2;
    })
    .await;
    let (id, _) = create(&hub, json!({ "name": "down", "url": receiver.url(), "retry_max": 10, "event_types": ["token.created"] })).await;
    hub.make_token_events(1).await;
    eventually(Duration::from_secs(15), "the webhook disabled", || async {
        let (_, w) = hub
            .get(&format!("/api/webhooks/{id}"), &hub.admin_token)
            .await;
        (w["enabled"] == false).then_some(())
    })
    .await;
    let (_, w) = hub
        .get(&format!("/api/webhooks/{id}"), &hub.admin_token)
        .await;
    assert!(
        w["disabled_reason"].as_str().unwrap().contains("failed"),
        "{w}"
    );
    assert_eq!(hub.events("event_type=webhook.disabled").await.len(), 1);
}

#[tokio::test]
async fn a_timeout_and_a_redirect_are_failures() {
    let slow = Receiver::scripted(vec![], Reply::status(200).after(Duration::from_secs(5))).await;
    let moved = Receiver::scripted(
        vec![],
        Reply::status(302).header("location", "http://127.0.0.1:9/elsewhere"),
    )
    .await;
    let hub = hub().await;
    let (slow_id, _) = create(&hub, json!({ "name": "slow", "url": slow.url(), "timeout": 1, "retry_max": 1, "event_types": ["token.created"] })).await;
    let (moved_id, _) = create(
        &hub,
        json!({ "name": "moved", "url": moved.url(), "event_types": ["token.created"] }),
    )
    .await;
    hub.make_token_events(1).await;
    let log = eventually(Duration::from_secs(10), "the timeout logged", || async {
        let log = deliveries(&hub, &slow_id).await;
        (!log.is_empty()).then_some(log)
    })
    .await;
    assert_eq!(log[0]["status"], "failed");
    assert!(
        log[0]["error"].as_str().unwrap().contains("timed out"),
        "{log:?}"
    );
    assert!(log[0]["duration_ms"].as_u64().unwrap() < 3000);
    let log = eventually(Duration::from_secs(10), "the redirect logged", || async {
        let log = deliveries(&hub, &moved_id).await;
        (!log.is_empty()).then_some(log)
    })
    .await;
    assert_eq!(
        (log[0]["status"].as_str(), log[0]["status_code"].as_u64()),
        (Some("failed"), Some(302))
    );
    assert!(log[0]["error"].as_str().unwrap().contains("redirect"));
    assert_eq!(
        moved.received().len(),
        1,
        "a redirect is neither followed nor retried"
    );
}

#[tokio::test]
async fn a_receiver_down_for_a_while_gets_everything_when_it_comes_back() {
    let addr = {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap()
    };
    let hub = hub().await;
    let (id, _) = create(
        &hub,
        json!({ "name": "later", "url": format!("http://{addr}/hook"), "retry_max": 10, "event_types": ["token.created"] }),
    )
    .await;
    hub.make_token_events(5).await;
    eventually(
        Duration::from_secs(10),
        "failed attempts while down",
        || async { (deliveries(&hub, &id).await.len() >= 5).then_some(()) },
    )
    .await;
    let receiver = Receiver::start_on(addr, &[]).await;
    let got = wait_for(&receiver, 5, Duration::from_secs(20)).await;
    let ids: BTreeSet<String> = got.iter().map(|r| r.header("webhook-id")).collect();
    assert_eq!(ids.len(), 5);
    let log = deliveries(&hub, &id).await;
    assert!(
        log.iter()
            .any(|d| d["status"] == "retrying"
                && d["error"].as_str().unwrap().contains("connection"))
    );
    assert!(
        log.iter()
            .all(|d| !d["error"].as_str().unwrap_or_default().contains("/hook")),
        "the URL (which may hold a token) stays out of the delivery log: {log:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_receiver_does_not_delay_a_fast_one() {
    let slow = Receiver::scripted(vec![], Reply::status(200).after(Duration::from_secs(3))).await;
    let fast = Receiver::start(&[]).await;
    let hub = hub().await;
    create(
        &hub,
        json!({ "name": "slow", "url": slow.url(), "event_types": ["token.created"] }),
    )
    .await;
    create(
        &hub,
        json!({ "name": "fast", "url": fast.url(), "event_types": ["token.created"] }),
    )
    .await;
    let started = Instant::now();
    hub.make_token_events(6).await;
    wait_for(&fast, 6, Duration::from_secs(10)).await;
    // The slow receiver needs 3 s per delivery (at most 2 at once): 9 s for six.
    assert!(
        started.elapsed() < Duration::from_secs(6),
        "fast receiver waited {:?}",
        started.elapsed()
    );
    assert!(slow.received().len() < 6);
}

#[tokio::test]
async fn the_test_endpoint_reports_the_real_outcome_to_one_webhook_only() {
    let ok = Receiver::start(&[]).await;
    let broken = Receiver::scripted(vec![], Reply::status(500)).await;
    let bystander = Receiver::start(&[]).await;
    let hub = hub().await;
    let (ok_id, _) = create(&hub, json!({ "name": "ok", "url": ok.url() })).await;
    let (broken_id, _) = create(&hub, json!({ "name": "broken", "url": broken.url() })).await;
    create(
        &hub,
        json!({ "name": "all events", "url": bystander.url() }),
    )
    .await;
    let t = &hub.admin_token;
    let (status, good) = send(hub.request(
        Method::POST,
        &format!("/api/webhooks/{ok_id}/test"),
        Some(t),
    ))
    .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        (
            good["success"].as_bool(),
            good["status_code"].as_u64(),
            &good["error"]
        ),
        (Some(true), Some(200), &Value::Null)
    );
    assert!(good["duration_ms"].is_u64());
    let (_, bad) = send(hub.request(
        Method::POST,
        &format!("/api/webhooks/{broken_id}/test"),
        Some(t),
    ))
    .await;
    assert_eq!(
        (bad["success"].as_bool(), bad["status_code"].as_u64()),
        (Some(false), Some(500))
    );
    let tests: Vec<Received> = ok
        .received()
        .into_iter()
        .filter(|r| r.json()["event_type"] == "webhook.test")
        .collect();
    assert_eq!(tests.len(), 1, "the test event reached its webhook once");
    assert_eq!(tests[0].json()["event_id"], good["event_id"]);
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert!(
        bystander
            .received()
            .iter()
            .all(|r| r.json()["event_type"] != "webhook.test"),
        "a test goes to its webhook only"
    );
    let broken_tests = broken
        .received()
        .iter()
        .filter(|r| r.json()["event_type"] == "webhook.test")
        .count();
    assert_eq!(broken_tests, 1, "a failed test is not retried");
    let log = deliveries(&hub, &broken_id).await;
    let test_row = log
        .iter()
        .find(|d| d["event_type"] == "webhook.test")
        .unwrap();
    assert_eq!(
        (test_row["status"].as_str(), test_row["attempt"].as_u64()),
        (Some("failed"), Some(1))
    );
}

#[tokio::test]
async fn a_delivery_can_be_redelivered_with_the_same_event_id() {
    let receiver = Receiver::start(&[]).await;
    let hub = hub().await;
    let (id, _) = create(
        &hub,
        json!({ "name": "r", "url": receiver.url(), "event_types": ["token.created"] }),
    )
    .await;
    hub.make_token_events(1).await;
    let first = wait_for(&receiver, 1, Duration::from_secs(10)).await[0].clone();
    let delivery_id = eventually(Duration::from_secs(5), "the delivery logged", || async {
        deliveries(&hub, &id)
            .await
            .first()
            .map(|d| d["id"].as_str().unwrap().to_string())
    })
    .await;
    let path = format!("/api/webhooks/{id}/deliveries/{delivery_id}/redeliver");
    let (status, body) = send(hub.request(Method::POST, &path, Some(&hub.admin_token))).await;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let again = wait_for(&receiver, 2, Duration::from_secs(10)).await[1].clone();
    assert_eq!(again.header("webhook-id"), first.header("webhook-id"));
    assert_eq!(again.body, first.body);
    let missing = send(hub.request(
        Method::POST,
        &format!("/api/webhooks/{id}/deliveries/nope/redeliver"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_error(&missing, StatusCode::NOT_FOUND, "delivery");
    let filtered = hub
        .get(
            &format!("/api/webhooks/{id}/deliveries?status=failed"),
            &hub.admin_token,
        )
        .await;
    assert_eq!(filtered.1["total"], 0);
    let bad = hub
        .get(
            &format!("/api/webhooks/{id}/deliveries?status=lost"),
            &hub.admin_token,
        )
        .await;
    assert_error(&bad, StatusCode::BAD_REQUEST, "status");
}

#[tokio::test]
async fn a_rotated_secret_signs_alongside_the_old_one_during_the_grace_period() {
    let receiver = Receiver::start(&[]).await;
    let hub = hub().await;
    let (id, created) = create(
        &hub,
        json!({ "name": "r", "url": receiver.url(), "generate_secret": true, "event_types": ["token.created"] }),
    )
    .await;
    let old = created["secret"].as_str().unwrap().to_string();
    let (status, rotated) = hub
        .send_json(
            Method::POST,
            &format!("/api/webhooks/{id}/secret/rotate"),
            &hub.admin_token,
            json!({ "grace_period_seconds": 3600 }),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{rotated}");
    let new = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new, old);
    assert!(rotated["previous_secret_expires_at"].is_string());
    hub.make_token_events(1).await;
    let r = wait_for(&receiver, 1, Duration::from_secs(10))
        .await
        .remove(0);
    assert_eq!(r.header("webhook-signature").matches("v1,").count(), 2);
    assert_eq!(
        verify_independently(&r, &[&new, &old]),
        json!({ "sm": true, "standard": [true, true] })
    );

    // Without a grace period the old secret stops at once (and the body may be left out).
    let (status, again) = send(hub.request(
        Method::POST,
        &format!("/api/webhooks/{id}/secret/rotate"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(status, StatusCode::OK, "{again}");
    let newest = again["secret"].as_str().unwrap().to_string();
    hub.make_token_events(1).await;
    let r = wait_for(&receiver, 2, Duration::from_secs(10))
        .await
        .remove(1);
    assert_eq!(
        verify_independently(&r, &[&newest, &new]),
        json!({ "sm": true, "standard": [true, false] })
    );

    // Replacing a (leaked) secret with PUT ends a running grace period too.
    let path = format!("/api/webhooks/{id}/secret/rotate");
    let body = json!({ "grace_period_seconds": 3600 });
    hub.send_json(Method::POST, &path, &hub.admin_token, body)
        .await;
    let (_, replaced) = hub
        .send_json(
            Method::PUT,
            &format!("/api/webhooks/{id}"),
            &hub.admin_token,
            json!({ "generate_secret": true }),
        )
        .await;
    assert_eq!(
        replaced["webhook"]["previous_secret_expires_at"],
        Value::Null
    );
    let fresh = replaced["secret"].as_str().unwrap().to_string();
    hub.make_token_events(1).await;
    let r = wait_for(&receiver, 3, Duration::from_secs(10))
        .await
        .remove(2);
    assert_eq!(r.header("webhook-signature").matches("v1,").count(), 1);
    assert_eq!(
        verify_independently(&r, &[&fresh]),
        json!({ "sm": true, "standard": [true] })
    );
}

#[tokio::test]
async fn every_pending_delivery_survives_a_kill_9() {
    let receiver =
        Receiver::scripted(vec![], Reply::status(200).after(Duration::from_millis(5))).await;
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("SMON_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("SMON_WEBHOOKS_ALLOW_CIDRS", "127.0.0.1/32"),
        ("SMON_WEBHOOKS_RETRY_BASE_SECS", "1"),
        ("SMON_WEBHOOKS_WORKERS", "2"),
        ("SMON_WEBHOOKS_PER_WEBHOOK_CONCURRENCY", "1"),
        ("SMON_RATE_LIMITS_API_PER_MINUTE", "1000000"),
    ];
    let (mut child, base, _) = spawn_serve_with(dir.path(), &env);
    let (client, token) = admin_session(&base, ADMIN_PASSWORD).await;
    // A receiver taking a few milliseconds per delivery, one at a time: a backlog builds up.
    let created: Value = client
        .post(format!("{base}/api/webhooks"))
        .bearer_auth(&token)
        .json(&json!({ "name": "r", "url": receiver.url(), "event_types": ["token.created"] }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(created["success"], true, "{created}");
    let mut made = tokio::task::JoinSet::new();
    for i in 0..1000 {
        let req = client
            .post(format!("{base}/api/users/me/tokens"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("k{i}") }));
        made.spawn(async move { req.send().await.unwrap().status() });
        if made.len() >= 16 {
            assert_eq!(
                made.join_next().await.unwrap().unwrap(),
                StatusCode::CREATED
            );
        }
    }
    for status in made.join_all().await {
        assert_eq!(status, StatusCode::CREATED);
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while receiver.received().len() < 20 {
        assert!(Instant::now() < deadline, "deliveries never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = receiver.received().len();
    assert!(
        before < 1000,
        "everything was delivered before the kill; the test proves nothing"
    );

    let (mut child, _base, _) = spawn_serve_with(dir.path(), &env);
    // Duplicates are allowed (at least once); every one of the 1,000 events must arrive.
    let by_id = eventually(Duration::from_secs(120), "all 1,000 events", || async {
        let mut by_id: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in receiver.received() {
            by_id
                .entry(r.header("webhook-id"))
                .or_default()
                .push(r.json()["event_id"].as_str().unwrap().to_string());
        }
        (by_id.len() >= 1000).then_some(by_id)
    })
    .await;
    for (webhook_id, event_ids) in &by_id {
        assert!(
            event_ids.iter().all(|e| e == webhook_id),
            "a duplicate carries the same webhook-id"
        );
    }
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());
}

#[tokio::test]
async fn delivery_logs_older_than_the_retention_are_pruned() {
    let receiver = Receiver::start(&[]).await;
    let hub = hub().await;
    let (id, _) = create(
        &hub,
        json!({ "name": "r", "url": receiver.url(), "event_types": ["token.created"] }),
    )
    .await;
    hub.make_token_events(2).await;
    eventually(Duration::from_secs(10), "two deliveries logged", || async {
        (deliveries(&hub, &id).await.len() == 2).then_some(())
    })
    .await;
    // The pruner runs at start: with a retention of zero days every logged row is too old.
    let dir = hub.stop().await;
    let hub = TestHub::start_in(dir, |c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.webhooks.delivery_retention_days = 0;
    })
    .await;
    eventually(Duration::from_secs(10), "the log pruned", || async {
        deliveries(&hub, &id).await.is_empty().then_some(())
    })
    .await;
    let (_, w) = hub
        .get(&format!("/api/webhooks/{id}"), &hub.admin_token)
        .await;
    assert_eq!(w["name"], "r", "the webhook itself stays");
}

#[tokio::test]
async fn a_lost_secret_key_is_reported_not_a_crash() {
    let receiver = Receiver::start(&[]).await;
    let hub = hub().await;
    let (id, _) = create(
        &hub,
        json!({ "name": "r", "url": receiver.url(), "generate_secret": true }),
    )
    .await;
    let dir = hub.stop().await;
    // Started again with another key, the sealed secret cannot be opened.
    let hub = TestHub::start_in(dir, |c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.secret_key = "ab".repeat(32).as_str().into();
    })
    .await;
    let (status, list) = hub.get("/api/webhooks", &hub.admin_token).await;
    assert_eq!(status, StatusCode::OK, "{list}");
    assert!(
        list["webhooks"][0]["secret"]
            .as_str()
            .unwrap()
            .contains("cannot be decrypted")
    );
    let (_, outcome) = send(hub.request(
        Method::POST,
        &format!("/api/webhooks/{id}/test"),
        Some(&hub.admin_token),
    ))
    .await;
    assert_eq!(outcome["success"], false);
    assert!(
        outcome["error"].as_str().unwrap().contains("secret key"),
        "{outcome}"
    );
    assert!(
        receiver
            .received()
            .iter()
            .all(|r| r.json()["event_type"] != "webhook.test"),
        "nothing unsigned is sent"
    );
}
