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
