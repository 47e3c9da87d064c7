//! The web UI in a real browser: Debian's Chromium driven by playwright-core
//! (crates/hub/tests/browser/e2e.mjs), against a hub with its own agent and a webhook receiver.
//! Screenshots of the main pages go to target/screenshots/.

use std::path::PathBuf;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::receiver::Receiver;
use crate::common::*;

#[tokio::test]
#[ignore = "needs Chromium and playwright-core (npm): run by .ci/run"]
async fn the_web_ui_works_end_to_end_in_chromium() {
    let receiver = Receiver::start(&[]).await;
    let hub = TestHub::start_with(|c| {
        c.local_agent = true;
        c.fleet.local_agent_interval_secs = 1;
        c.fleet.local_agent_allow_tasks = true;
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
    })
    .await;
    // A rule that fires at once on any reporting server, for the alerts page.
    let (status, body) = hub
        .send_json(
            Method::POST,
            "/api/alerts/rules",
            &hub.admin_token,
            json!({ "name": "ui-always", "metric": "cpu", "comparison": ">=", "threshold": 0,
                    "for": 0, "severity": "critical" }),
        )
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR"));
    let screenshots = dir.join("../../target/screenshots");
    let mut child = tokio::process::Command::new("node")
        .arg(dir.join("tests/browser/e2e.mjs"))
        .current_dir(dir.join("tests/browser"))
        .env("BASE_URL", &hub.base)
        .env("ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("RECEIVER_URL", receiver.url())
        .env("SCREENSHOTS", &screenshots)
        .kill_on_drop(true)
        .spawn()
        .expect("node (and `npm ci` in crates/hub/tests/browser)");
    let status = tokio::time::timeout(Duration::from_secs(240), child.wait())
        .await
        .expect("the browser run ends within 4 minutes")
        .unwrap();
    assert!(
        status.success(),
        "the browser run failed (its output is above)"
    );

    // What the browser did, seen from the hub and the receiver.
    let got = receiver.received();
    assert_eq!(got.len(), 1, "one test delivery");
    assert_eq!(got[0].json()["event_type"], "webhook.test");
    let (_, list) = hub.get("/api/webhooks", &hub.admin_token).await;
    assert_eq!(list["webhooks"][0]["name"], "receiver-renamed");
    assert_eq!(list["webhooks"][0]["enabled"], false);
    let (_, tasks) = hub.get("/api/tasks", &hub.admin_token).await;
    let task = tasks["tasks"][0]["id"].as_str().unwrap();
    let (_, task) = hub
        .get(&format!("/api/tasks/{task}"), &hub.admin_token)
        .await;
    assert_eq!(task["stdout"], "smon-ui-42\n", "{task}");
    for page in [
        "login", "fleet", "server", "task", "webhook", "webhooks", "alerts", "events",
    ] {
        assert!(
            screenshots.join(format!("{page}.png")).is_file(),
            "{page}.png"
        );
    }
}
