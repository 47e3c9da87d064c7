//! Several hubs on one PostgreSQL database (DESIGN section 8): deliveries shared without
//! duplicates, a killed hub's backlog finished by the other, leadership handed over.
//! Needs the PostgreSQL server `.ci/run` provides (see `common::pg`).

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::common::process::*;
use crate::common::receiver::{Receiver, Reply};
use crate::common::*;

/// Every hub of one deployment shares the secret key: webhook secrets sealed by one are opened
/// by the others.
const SHARED_KEY: &str = "5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed5eed";

/// A hub on `database` sharing the deployment's key, delivering with `workers` workers.
async fn hub_on(database: &str, workers: usize) -> TestHub {
    let database = database.to_string();
    TestHub::start_with(move |c| {
        c.database_url = database;
        c.secret_key = SHARED_KEY.into();
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.webhooks.workers = workers;
        c.webhooks.per_webhook_concurrency = 8;
    })
    .await
}

/// Queue `n` deliveries to `receiver` on a fresh database without delivering any (the hub
/// that makes them has no workers), and return the database's URL.
async fn database_with_backlog(receiver: &Receiver, n: usize) -> String {
    let database = pg::fresh_database().await;
    let hub = hub_on(&database, 0).await;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/webhooks",
            &hub.admin_token,
            json!({ "name": "r", "url": receiver.url(), "event_types": ["token.created"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["webhook_id"].as_str().unwrap().to_string();
    hub.make_token_events(n).await;
    eventually(Duration::from_secs(60), "every delivery queued", || async {
        let (_, w) = hub
            .get(&format!("/api/webhooks/{id}"), &hub.admin_token)
            .await;
        (w["pending_deliveries"].as_u64() == Some(n as u64)).then_some(())
    })
    .await;
    assert!(
        receiver.received().is_empty(),
        "a hub without workers delivered"
    );
    hub.stop().await;
    database
}

/// Deliveries received, by webhook-id (the event id), each with how many times it came.
fn received_by_id(receiver: &Receiver) -> BTreeMap<String, usize> {
    let mut by_id = BTreeMap::new();
    for r in receiver.received() {
        *by_id.entry(r.header("webhook-id")).or_default() += 1;
    }
    by_id
}

/// Successful attempts this hub made, from its metrics.
async fn delivered_by(hub: &TestHub) -> u64 {
    let text = hub
        .request(Method::GET, "/api/metrics", Some(&hub.admin_token))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("smon_webhook_deliveries_total{status=\"success\"} "))
        .and_then(|v| v.trim().parse::<f64>().ok())
        .expect("the delivery counter") as u64
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run by .ci/run"]
async fn two_hubs_on_one_database_deliver_each_of_1000_events_exactly_once() {
    let receiver =
        Receiver::scripted(vec![], Reply::status(200).after(Duration::from_millis(2))).await;
    let database = database_with_backlog(&receiver, 1000).await;

    let (a, b) = tokio::join!(hub_on(&database, 4), hub_on(&database, 4));
    let by_id = eventually(Duration::from_secs(120), "1,000 deliveries", || async {
        let by_id = received_by_id(&receiver);
        (by_id.len() >= 1000).then_some(by_id)
    })
    .await;
    // Anything delivered twice would arrive within moments of the rest.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let twice: Vec<_> = received_by_id(&receiver)
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .collect();
    assert!(
        twice.is_empty(),
        "{} events delivered more than once, e.g. {:?}",
        twice.len(),
        &twice[..twice.len().min(5)]
    );
    assert_eq!(by_id.len(), 1000);
    assert_eq!(receiver.received().len(), 1000);
    // Both hubs took part, and their counts add up to the deliveries.
    let (by_a, by_b) = (delivered_by(&a).await, delivered_by(&b).await);
    assert!(
        by_a > 0 && by_b > 0,
        "one hub did all the work: {by_a} + {by_b}"
    );
    assert_eq!(by_a + by_b, 1000);
    for hub in [&a, &b] {
        let (_, page) = hub.get("/api/webhooks", &hub.admin_token).await;
        assert_eq!(page["webhooks"][0]["pending_deliveries"], 0, "{page}");
    }
    a.stop().await;
    b.stop().await;
}

/// `smon serve` on `database`, as one hub of a deployment.
fn spawn_hub(dir: &std::path::Path, database: &str) -> (std::process::Child, String) {
    let env = [
        ("SMON_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("SMON_DATABASE_URL", database),
        ("SMON_SECRET_KEY", SHARED_KEY),
        ("SMON_WEBHOOKS_ALLOW_CIDRS", "127.0.0.1/32"),
        ("SMON_WEBHOOKS_WORKERS", "4"),
        ("SMON_WEBHOOKS_PER_WEBHOOK_CONCURRENCY", "8"),
        ("SMON_RATE_LIMITS_API_PER_MINUTE", "1000000"),
    ];
    let (child, base, _) = spawn_serve_with(dir, &env);
    (child, base)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run by .ci/run"]
async fn killing_one_hub_mid_backlog_leaves_the_other_to_finish_and_lead() {
    // A receiver taking a few milliseconds per delivery: the backlog lasts a few seconds.
    let receiver =
        Receiver::scripted(vec![], Reply::status(200).after(Duration::from_millis(10))).await;
    let database = database_with_backlog(&receiver, 1000).await;
    let (dir_a, dir_b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    // The first hub up takes the leader lease; it is the one killed.
    let (mut first, _) = spawn_hub(dir_a.path(), &database);
    let (mut second, base) = spawn_hub(dir_b.path(), &database);

    let deadline = Instant::now() + Duration::from_secs(60);
    while receiver.received().len() < 200 {
        assert!(Instant::now() < deadline, "deliveries never started");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    first.kill().unwrap();
    first.wait().unwrap();
    let at_kill = received_by_id(&receiver).len();
    assert!(
        at_kill < 1000,
        "everything was delivered before the kill; the test proves nothing"
    );

    // The survivor finishes the backlog, the killed hub's leased jobs included once their
    // lease runs out.
    let by_id = eventually(Duration::from_secs(120), "all 1,000 events", || async {
        let by_id = received_by_id(&receiver);
        (by_id.len() >= 1000).then_some(by_id)
    })
    .await;
    // At least once: only what the killed hub was sending at that moment may come twice.
    let repeated: usize = by_id.values().map(|n| n - 1).sum();
    assert!(
        repeated <= 4,
        "{repeated} repeated deliveries: more than the killed hub's 4 workers"
    );

    // The survivor takes the leader lease over: events made now are dispatched and delivered.
    let (client, token) = admin_session(&base, ADMIN_PASSWORD).await;
    for i in 0..10 {
        let status = client
            .post(format!("{base}/api/users/me/tokens"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("after-{i}") }))
            .send()
            .await
            .unwrap()
            .status();
        assert_eq!(status, StatusCode::CREATED);
    }
    eventually(
        Duration::from_secs(60),
        "the events made after the kill delivered",
        || async { (received_by_id(&receiver).len() >= 1010).then_some(()) },
    )
    .await;
    let events: Value = client
        .get(format!(
            "{base}/api/audit-logs?event_type=token.created&limit=1"
        ))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(events["total"], 1010, "{events}");
    sigterm(&second);
    assert!(wait_exit(&mut second, Duration::from_secs(10)).success());
}

/// What a client sees of a hub's data: every list and detail the API has, read with one
/// personal token. Fields that change by themselves (a session's last use, a login stamp)
/// are left out.
async fn snapshot(hub: &TestHub, token: &str, server: &str, webhook: &str, until: &str) -> Value {
    // History from an hour before `until`: the raw tier answers at most a few hours.
    let since = chrono::DateTime::parse_from_rfc3339(until).unwrap() - chrono::Duration::hours(1);
    let since = since.to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let paths = [
        "/api/users".to_string(),
        "/api/users/me/tokens".into(),
        "/api/servers".into(),
        format!("/api/servers/{server}"),
        format!("/api/servers/{server}/inventory/latest"),
        format!("/api/servers/{server}/metrics?metric=cpu&tier=raw&from={since}&to={until}"),
        format!("/api/servers/{server}/metrics?metric=cpu&tier=1m&from={since}&to={until}"),
        format!("/api/servers/{server}/metrics?metric=cpu&tier=1h&from={since}&to={until}"),
        "/api/stats/overview".into(),
        "/api/webhooks".into(),
        format!("/api/webhooks/{webhook}/deliveries"),
        "/api/notifications/channels".into(),
        "/api/alerts/rules".into(),
        "/api/alerts?limit=100".into(),
        "/api/tasks".into(),
        format!("/api/audit-logs?limit=1000&until={until}"),
    ];
    let mut all = serde_json::Map::new();
    for path in paths {
        let (status, mut body) = hub.get(&path, token).await;
        assert_eq!(status, StatusCode::OK, "{path}: {body}");
        strip(&mut body, &["last_login_at", "last_used_at"]);
        all.insert(path, body);
    }
    Value::Object(all)
}

fn strip(v: &mut Value, keys: &[&str]) {
    match v {
        Value::Object(m) => {
            for k in keys {
                m.remove(*k);
            }
            m.values_mut().for_each(|v| strip(v, keys));
        }
        Value::Array(a) => a.iter_mut().for_each(|v| strip(v, keys)),
        _ => {}
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run by .ci/run"]
async fn a_sqlite_database_migrated_to_postgres_serves_the_same_answers() {
    let receiver = Receiver::start(&[]).await;
    let adjust = |c: &mut smon_hub::Config| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
    };
    let hub = TestHub::start_with(|c| {
        c.database_url = String::new(); // the default: SQLite in the data directory
        adjust(c);
    })
    .await;
    // A little of everything: users, tokens, a server with history and inventory, a firing
    // alert, a task, a webhook with deliveries, a notification channel with sealed settings.
    hub.create_user("ops", "operator").await;
    let (status, created) = hub
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            &hub.admin_token,
            json!({ "name": "reader" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap().to_string();
    let (server, agent_token) = hub.create_server("db-1", &["db", "eu"]).await;
    let now = chrono::Utc::now();
    let samples = (0..30)
        .map(|i| {
            agent::sample(
                now - chrono::Duration::seconds(300 - i * 10),
                50.0 + i as f64,
            )
        })
        .collect();
    let (status, answer) = hub
        .post_report(
            &agent_token,
            &agent::report(samples, Some(agent::inventory("db-1"))),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{answer}");
    let (status, webhook) = hub
        .send_json(
            Method::POST,
            "/api/webhooks",
            &hub.admin_token,
            // Not the logins: the second hub's would be delivered after the copy.
            json!({ "name": "r", "url": receiver.url(), "event_types": ["alert.triggered"] }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{webhook}");
    let webhook = webhook["webhook_id"].as_str().unwrap().to_string();
    let (status, rule) = hub
        .send_json(
            Method::POST,
            "/api/alerts/rules",
            &hub.admin_token,
            json!({ "name": "hot", "metric": "cpu", "comparison": ">", "threshold": 60,
                    "for": "0s", "severity": "critical" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    let (status, task) = hub
        .send_json(
            Method::POST,
            &format!("/api/servers/{server}/tasks"),
            &hub.admin_token,
            json!({ "command": "uptime" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let (status, channel) = hub
        .send_json(
            Method::POST,
            "/api/notifications/channels",
            &hub.admin_token,
            json!({ "name": "pager", "kind": "ntfy",
                    "config": { "server_url": receiver.base(), "topic": "ops", "token": "tk_secret" } }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{channel}");
    // The firing alert and the deliveries of everything so far.
    eventually(Duration::from_secs(15), "the alert firing", || async {
        let (_, alerts) = hub.get("/api/alerts?status=firing", &token).await;
        (alerts["total"] == 1).then_some(())
    })
    .await;
    eventually(
        Duration::from_secs(15),
        "the webhook's deliveries",
        || async {
            let (_, w) = hub.get(&format!("/api/webhooks/{webhook}"), &token).await;
            (w["pending_deliveries"] == 0 && !receiver.received().is_empty()).then_some(())
        },
    )
    .await;
    let until = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    tokio::time::sleep(Duration::from_millis(5)).await;
    let before = snapshot(&hub, &token, &server, &webhook, &until).await;
    let dir = hub.stop().await;

    let database = pg::fresh_database().await;
    let from = format!("sqlite://{}", dir.path().join("smon.db").display());
    let migrate = |to: &str| {
        smon(dir.path())
            .args(["migrate-data", "--from", &from, "--to", to])
            .output()
            .expect("smon runs")
    };
    let out = migrate(&database);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("verified"), "{stdout}");
    assert!(
        stdout
            .lines()
            .any(|l| l.starts_with("metrics_raw ") && l.contains(" 30 ")),
        "the counts are printed: {stdout}"
    );
    // Into a database that has data, nothing is copied.
    let again = migrate(&database);
    assert!(!again.status.success());
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("not empty"),
        "{}",
        String::from_utf8_lossy(&again.stderr)
    );

    // The same data directory (so the same secret key), now on PostgreSQL.
    let hub = TestHub::start_in(dir, |c| {
        c.database_url = database.clone();
        adjust(c);
    })
    .await;
    let after = snapshot(&hub, &token, &server, &webhook, &until).await;
    for (path, answer) in before.as_object().unwrap() {
        assert_eq!(&after[path], answer, "{path} differs after the migration");
    }
    // Sealed settings still open with the same key: the channel's test reaches the receiver.
    let channel = channel["channel_id"].as_str().unwrap();
    let (status, tested) = hub
        .send_json(
            Method::POST,
            &format!("/api/notifications/channels/{channel}/test"),
            &hub.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{tested}");
    assert!(
        receiver.received().iter().any(|r| r
            .headers
            .get("authorization")
            .is_some_and(|v| v == "Bearer tk_secret")),
        "the ntfy token survived the copy"
    );
    // New rows continue after the copied ones.
    hub.create_server("db-2", &[]).await;
    let (_, list) = hub.get("/api/servers", &token).await;
    assert_eq!(list["total"], 2);
    hub.stop().await;
}

/// A hub of a deployment whose servers report every second and go offline after two
/// missed intervals.
async fn fleet_hub_on(database: &str) -> TestHub {
    let database = database.to_string();
    TestHub::start_with(move |c| {
        c.database_url = database;
        c.secret_key = SHARED_KEY.into();
        c.fleet.offline_after_intervals = 2;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "needs PostgreSQL: run by .ci/run"]
async fn two_hubs_show_one_fleet_and_judge_it_once() {
    let database = pg::fresh_database().await;
    // The first hub up leads: it alone detects offline servers and evaluates alerts.
    let leader = fleet_hub_on(&database).await;
    let other = fleet_hub_on(&database).await;
    // A rule made on the other hub reaches the leader's evaluation.
    let (status, rule) = other
        .send_json(
            Method::POST,
            "/api/alerts/rules",
            &other.admin_token,
            json!({ "name": "hot", "metric": "cpu", "comparison": ">", "threshold": 90,
                    "for": "0s", "severity": "critical" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{rule}");
    eventually(
        Duration::from_secs(10),
        "the rule on the leader",
        || async {
            let (_, rules) = leader.get("/api/alerts/rules", &leader.admin_token).await;
            rules.to_string().contains("\"hot\"").then_some(())
        },
    )
    .await;

    // A server added on the leader reports to the other hub only.
    let (status, created) = leader
        .send_json(
            Method::POST,
            "/api/servers",
            &leader.admin_token,
            json!({ "name": "web-1", "interval_secs": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["server_id"].as_str().unwrap().to_string();
    let agent_token = created["agent_token"].as_str().unwrap().to_string();
    let report = |cpu: f64| agent::report(vec![agent::sample(chrono::Utc::now(), cpu)], None);
    eventually(
        Duration::from_secs(10),
        "the other hub knows the server",
        || async {
            let (status, _) = other.post_report(&agent_token, &report(20.0)).await;
            (status == StatusCode::OK).then_some(())
        },
    )
    .await;

    // Both hubs show it online with its latest values.
    for hub in [&leader, &other] {
        eventually(Duration::from_secs(10), "online on both hubs", || async {
            let s = hub.server(&id).await;
            (s["status"] == "online" && s["metrics"]["cpu_percent"] == 20.0).then_some(())
        })
        .await;
    }
    // A task given on the leader is handed out with a report to the other hub.
    let (status, task) = leader
        .send_json(
            Method::POST,
            &format!("/api/servers/{id}/tasks"),
            &leader.admin_token,
            json!({ "command": "uptime" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{task}");
    let task_id = task["task_id"].as_str().unwrap().to_string();
    eventually(
        Duration::from_secs(10),
        "the task handed out by the other hub",
        || async {
            let (_, answer) = other.post_report(&agent_token, &report(20.0)).await;
            answer["tasks"]
                .as_array()
                .is_some_and(|t| t.iter().any(|t| t["id"] == task_id.as_str()))
                .then_some(())
        },
    )
    .await;

    // A breach reported to the other hub is judged by the leader: one alert.
    let (status, _) = other.post_report(&agent_token, &report(97.0)).await;
    assert_eq!(status, StatusCode::OK);
    eventually(Duration::from_secs(15), "the alert firing", || async {
        let (_, alerts) = other
            .get("/api/alerts?status=firing", &other.admin_token)
            .await;
        (alerts["total"] == 1).then_some(())
    })
    .await;

    // Silent, it goes offline once, on both hubs.
    for hub in [&leader, &other] {
        eventually(Duration::from_secs(20), "offline on both hubs", || async {
            (hub.server(&id).await["status"] == "offline").then_some(())
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(3)).await;
    let offline = leader
        .events(&format!("event_type=server.offline&server_id={id}"))
        .await;
    assert_eq!(offline.len(), 1, "one offline verdict: {offline:?}");
    let online = leader
        .events(&format!("event_type=server.online&server_id={id}"))
        .await;
    assert_eq!(online.len(), 1, "{online:?}");
    let (_, alerts) = leader
        .get("/api/alerts?limit=100", &leader.admin_token)
        .await;
    let hot: Vec<&Value> = alerts["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|a| a["rule_name"] == "hot")
        .collect();
    assert_eq!(hot.len(), 1, "{alerts}");

    // Renamed on one hub, deleted on the other: both see each change.
    let (status, _) = other
        .send_json(
            Method::PUT,
            &format!("/api/servers/{id}"),
            &other.admin_token,
            json!({ "name": "web-one" }),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(
        Duration::from_secs(10),
        "the new name on the leader",
        || async { (leader.server(&id).await["name"] == "web-one").then_some(()) },
    )
    .await;
    let (status, _) = leader
        .send_json(
            Method::DELETE,
            &format!("/api/servers/{id}"),
            &leader.admin_token,
            json!({}),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    eventually(
        Duration::from_secs(10),
        "gone from the other hub",
        || async {
            let (status, _) = other
                .get(&format!("/api/servers/{id}"), &other.admin_token)
                .await;
            (status == StatusCode::NOT_FOUND).then_some(())
        },
    )
    .await;
    let (status, _) = other.post_report(&agent_token, &report(20.0)).await;
    assert_eq!(
        status,
        StatusCode::UNAUTHORIZED,
        "a deleted server's token is refused"
    );

    // A token revoked on one hub stops working on the other (which caches token checks).
    let (status, created) = leader
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            &leader.admin_token,
            json!({ "name": "ci" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap();
    let token_id = created["token_id"].as_str().unwrap();
    assert_eq!(other.get("/api/users/me", token).await.0, StatusCode::OK);
    let (status, _) = leader
        .send_json(
            Method::DELETE,
            &format!("/api/users/me/tokens/{token_id}"),
            &leader.admin_token,
            json!({}),
        )
        .await;
    assert!(status.is_success(), "{status}");
    assert_eq!(
        leader.get("/api/users/me", token).await.0,
        StatusCode::UNAUTHORIZED
    );
    eventually(
        Duration::from_secs(10),
        "the token refused by the other hub",
        || async {
            (other.get("/api/users/me", token).await.0 == StatusCode::UNAUTHORIZED).then_some(())
        },
    )
    .await;

    // The leader stops: the other hub takes over its once-only work. A server that reports
    // once and falls silent is marked offline by the new leader.
    leader.stop().await;
    let (status, created) = other
        .send_json(
            Method::POST,
            "/api/servers",
            &other.admin_token,
            json!({ "name": "web-2", "interval_secs": 1 }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{created}");
    let id = created["server_id"].as_str().unwrap().to_string();
    let agent_token = created["agent_token"].as_str().unwrap().to_string();
    let (status, _) = other.post_report(&agent_token, &report(20.0)).await;
    assert_eq!(status, StatusCode::OK);
    eventually(
        Duration::from_secs(30),
        "offline, judged by the new leader",
        || async { (other.server(&id).await["status"] == "offline").then_some(()) },
    )
    .await;
    other.stop().await;
}
