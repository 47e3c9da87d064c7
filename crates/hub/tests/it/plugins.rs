//! Plugins: exec scripts, isolation of misbehaving plugins, the allowlist, bad configuration,
//! jsonl rotation, the webhook plugin, and the outbox across a `kill -9`.

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use base64::Engine;
use hmac::{Hmac, Mac};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use sha2::Sha256;
use smon_hub::events::Event;
use smon_hub::plugins::{Plugin, PluginError, PluginRegistry};
use smon_hub::{Config, Hub};

use crate::common::process::*;
use crate::common::receiver::Receiver;
use crate::common::*;

fn write_script(dir: &Path, name: &str, body: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    path.display().to_string()
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

#[tokio::test]
async fn an_exec_script_receives_every_event_as_json_with_its_type_and_id_in_the_environment() {
    let scripts = tempfile::tempdir().unwrap();
    let out = scripts.path().join("out.tsv");
    let script = write_script(
        scripts.path(),
        "record.sh",
        &format!(
            // CARGO_PKG_NAME is in the test process's environment: it must not reach the program.
            "read -r line\nprintf '%s\\t%s\\t%s\\t%s\\n' \"$SMON_EVENT_TYPE\" \"$SMON_EVENT_ID\" \"${{CARGO_PKG_NAME:-withheld}}\" \"$line\" >> {}",
            out.display()
        ),
    );
    let hub = TestHub::start_with(|c| {
        c.plugins.allowlist = vec!["exec".into()];
        c.plugins.config.insert(
            "exec".into(),
            json!({ "command": script, "max_concurrency": 1 }),
        );
    })
    .await;
    hub.make_token_events(3).await;
    hub.try_login("admin", "wrong-password").await;

    let logged: BTreeSet<String> = hub
        .events("limit=1000")
        .await
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    let received = eventually(
        Duration::from_secs(10),
        "every event at the script",
        || async {
            let got = lines(&out);
            let ids: BTreeSet<String> = got
                .iter()
                .map(|l| l.split('\t').nth(1).unwrap().to_string())
                .collect();
            logged.is_subset(&ids).then_some(got)
        },
    )
    .await;
    for line in received {
        let mut parts = line.splitn(4, '\t');
        let (env_type, env_id, inherited, json) = (
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
            parts.next().unwrap(),
        );
        assert_eq!(
            inherited, "withheld",
            "the hub's environment leaked to the program"
        );
        let event: Value =
            serde_json::from_str(json).unwrap_or_else(|e| panic!("not JSON ({e}): {json}"));
        let keys: BTreeSet<&str> = event
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        assert_eq!(keys, EVENT_KEYS.into_iter().collect::<BTreeSet<_>>());
        assert_eq!(event["event_type"], env_type);
        assert_eq!(event["event_id"], env_id);
    }
    // A run is counted once the program has exited, just after it wrote its line.
    let exec = eventually(Duration::from_secs(5), "the runs counted", || async {
        let exec = hub.plugin_status("exec").await;
        (exec["handled"].as_u64() >= Some(5)).then_some(exec)
    })
    .await;
    assert_eq!(
        (exec["enabled"].as_bool(), exec["state"].as_str()),
        (Some(true), Some("running"))
    );
    assert_eq!(exec["failed"], 0);
}

/// Test plugins for misbehaviour.
struct Misbehaving {
    name: String,
    mode: &'static str,
    seen: Arc<Mutex<Vec<String>>>,
}

#[async_trait]
impl Plugin for Misbehaving {
    fn name(&self) -> &str {
        &self.name
    }

    async fn handle_event(&self, event: &Event) -> Result<(), PluginError> {
        self.seen.lock().unwrap().push(event.event_id.to_string());
        match self.mode {
            "panic" => panic!("boom on {}", event.event_type),
            "hang" => {
                tokio::time::sleep(Duration::from_secs(3600)).await;
                Ok(())
            }
            "fail" => Err(PluginError::new("receiver said no")),
            _ => Ok(()),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_hanging_or_failing_plugin_delays_neither_other_plugins_nor_the_api() {
    let recorded = Arc::new(Mutex::new(Vec::new()));
    let mut registry = PluginRegistry::builtin();
    for mode in ["panic", "hang", "fail", "record"] {
        let seen = if mode == "record" {
            recorded.clone()
        } else {
            Arc::new(Mutex::new(Vec::new()))
        };
        registry.register(mode, move |name, _, _| {
            Ok(Arc::new(Misbehaving {
                name: name.to_string(),
                mode,
                seen: seen.clone(),
            }))
        });
    }
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.plugins.allowlist = ["panic", "hang", "fail", "record"]
        .map(String::from)
        .to_vec();
    config.plugins.event_timeout_secs = 2;
    let hub = TestHubHandle::start(config, registry).await;

    // Each event costs the hanging plugin 2 s; eight of them would take it 16 s.
    let started = Instant::now();
    for i in 0..8 {
        let t = Instant::now();
        let (status, _) = hub
            .send_json(
                Method::POST,
                "/api/users/me/tokens",
                &hub.admin_token,
                json!({ "name": format!("x{i}") }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED);
        assert!(
            t.elapsed() < Duration::from_secs(2),
            "API request waited on a plugin: {:?}",
            t.elapsed()
        );
    }
    eventually(
        Duration::from_secs(8),
        "the recording plugin to see all events",
        || async { (recorded.lock().unwrap().len() >= 9).then_some(()) },
    )
    .await;
    assert!(
        started.elapsed() < Duration::from_secs(16),
        "the recorder waited for the hanging plugin"
    );

    // Panics are slow to unwind (backtraces), so the counters are read once they have caught up.
    let panic = eventually(Duration::from_secs(30), "every panic counted", || async {
        let panic = hub.plugin_status("panic").await;
        (panic["failed"].as_u64() >= Some(9)).then_some(panic)
    })
    .await;
    assert!(
        panic["last_error"]
            .as_str()
            .unwrap()
            .contains("panicked: boom"),
        "{panic}"
    );
    assert!(
        hub.plugin_status("fail").await["last_error"]
            .as_str()
            .unwrap()
            .contains("receiver said no")
    );
    assert!(
        hub.plugin_status("record").await["handled"]
            .as_u64()
            .unwrap()
            >= 9
    );
    let hang = eventually(
        Duration::from_secs(8),
        "the hanging plugin to time out",
        || async {
            let hang = hub.plugin_status("hang").await;
            (hang["failed"].as_u64() >= Some(1)).then_some(hang)
        },
    )
    .await;
    assert!(
        hang["last_error"].as_str().unwrap().contains("timed out"),
        "{hang}"
    );

    // Failures become plugin.error events (throttled), never errors about errors.
    let errors = hub.events("event_type=plugin.error").await;
    let plugins: BTreeSet<&str> = errors
        .iter()
        .map(|e| e["meta"]["plugin"].as_str().unwrap())
        .collect();
    assert!(
        plugins.contains("panic") && plugins.contains("fail"),
        "{errors:?}"
    );
    assert!(
        errors.len() <= 6,
        "plugin.error is throttled per plugin: {}",
        errors.len()
    );
    assert!(
        errors
            .iter()
            .all(|e| e["severity"] == "error" && e["meta"]["failed_event_type"] != "plugin.error")
    );
    hub.stop().await;
}

/// A hub started with a custom plugin registry.
struct TestHubHandle {
    inner: TestHub,
}

impl std::ops::Deref for TestHubHandle {
    type Target = TestHub;
    fn deref(&self) -> &TestHub {
        &self.inner
    }
}

impl TestHubHandle {
    async fn start(config: Config, registry: PluginRegistry) -> Self {
        TestHubHandle {
            inner: TestHub::start_hub(
                Hub::start_with(config, registry).await.expect("hub starts"),
                None,
            )
            .await,
        }
    }

    async fn stop(self) {
        self.inner.stop().await;
    }
}

#[tokio::test]
async fn only_allowlisted_plugins_are_loaded() {
    let scripts = tempfile::tempdir().unwrap();
    let marker = scripts.path().join("exec-ran");
    let script = write_script(
        scripts.path(),
        "touch.sh",
        &format!("cat > /dev/null; touch {}", marker.display()),
    );
    let hub = TestHub::start_with(|c| {
        c.plugins.allowlist = vec!["jsonl".into()];
        c.plugins
            .config
            .insert("exec".into(), json!({ "command": script }));
        c.plugins
            .config
            .insert("jsonl".into(), json!({ "path": "events.jsonl" }));
    })
    .await;
    hub.make_token_events(2).await;
    let jsonl = hub.data_dir().join("events.jsonl");
    eventually(
        Duration::from_secs(10),
        "events in the jsonl file",
        || async { (lines(&jsonl).len() >= 3).then_some(()) },
    )
    .await;
    assert!(
        !marker.exists(),
        "the exec plugin is not on the allowlist but ran"
    );
    assert_eq!(hub.plugin_status("exec").await["enabled"], false);
    assert_eq!(hub.plugin_status("exec").await["state"], "disabled");
    assert_eq!(hub.plugin_status("jsonl").await["enabled"], true);
    assert_eq!(
        hub.plugin_status("webhook").await["enabled"],
        false,
        "built-ins are listed as available"
    );
}

#[tokio::test]
async fn a_bad_plugin_configuration_refuses_to_start_and_names_the_plugin() {
    /// (allowlist, one plugin's configuration, what the error must mention)
    type Case = (
        Vec<&'static str>,
        Option<(&'static str, Value)>,
        &'static [&'static str],
    );
    let cases: Vec<Case> = vec![
        (vec!["exec"], None, &["plugin \"exec\"", "command"]),
        (
            vec!["exec"],
            Some(("exec", json!({ "command": "true", "colour": 1 }))),
            &["plugin \"exec\"", "colour"],
        ),
        (
            vec!["nosuch"],
            None,
            &["plugin \"nosuch\"", "unknown plugin kind", "jsonl"],
        ),
        (
            vec!["audit"],
            Some((
                "audit",
                json!({ "type": "jsonl", "path": "a.jsonl", "event_types": ["user.exploded"] }),
            )),
            &["plugin \"audit\"", "user.exploded", "user.login"],
        ),
        (
            vec!["webhook"],
            Some(("webhook", json!({ "url": "http://localhost:9/x" }))),
            &["plugin \"webhook\"", "url", "not allowed"],
        ),
        (
            vec!["webhook"],
            Some((
                "webhook",
                json!({ "url": "https://example.com/", "retry_max": 0 }),
            )),
            &["retry_max"],
        ),
    ];
    for (allowlist, config, needles) in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut c = test_config(dir.path());
        c.plugins.allowlist = allowlist.iter().map(|s| s.to_string()).collect();
        if let Some((name, value)) = config {
            c.plugins.config.insert(name.into(), value);
        }
        let err = match Hub::start(c).await {
            Ok(_) => panic!("hub started with a bad plugin configuration {allowlist:?}"),
            Err(e) => format!("{e:#}"),
        };
        for needle in needles {
            assert!(err.contains(needle), "{err:?} does not mention {needle:?}");
        }
    }
}

#[tokio::test]
async fn a_plugin_that_fails_to_start_stays_stopped_and_reports_it() {
    let hub = TestHub::start_with(|c| {
        c.plugins.allowlist = vec!["jsonl".into()];
        // A path under a regular file cannot be created.
        c.plugins
            .config
            .insert("jsonl".into(), json!({ "path": "/dev/null/events.jsonl" }));
    })
    .await;
    let jsonl = hub.plugin_status("jsonl").await;
    assert_eq!(jsonl["state"], "failed", "{jsonl}");
    assert!(
        jsonl["last_error"].as_str().unwrap().contains("startup"),
        "{jsonl}"
    );
    let errors = hub.events("event_type=plugin.error").await;
    assert_eq!(errors.len(), 1);
    hub.make_token_events(1).await;
}

#[tokio::test]
async fn the_jsonl_plugin_rotates_by_size_and_keeps_whole_lines() {
    let hub = TestHub::start_with(|c| {
        c.plugins.allowlist = vec!["jsonl".into()];
        c.plugins.config.insert(
            "jsonl".into(),
            json!({ "path": "log/events.jsonl", "max_bytes": 2048, "keep": 2 }),
        );
    })
    .await;
    hub.make_token_events(30).await;
    let base = hub.data_dir().join("log/events.jsonl");
    let rotated = |n: u32| hub.data_dir().join(format!("log/events.jsonl.{n}"));
    eventually(Duration::from_secs(10), "rotation", || async {
        rotated(2).exists().then_some(())
    })
    .await;
    assert!(!rotated(3).exists(), "keep = 2");
    for path in [base, rotated(1), rotated(2)] {
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.len() <= 2048,
            "{} is {} bytes",
            path.display(),
            text.len()
        );
        for line in text.lines() {
            serde_json::from_str::<Value>(line)
                .unwrap_or_else(|e| panic!("broken line in {}: {e}", path.display()));
        }
    }
}

#[tokio::test]
async fn the_webhook_plugin_signs_and_retries_until_the_receiver_accepts() {
    let receiver = Receiver::start(&[503, 500]).await;
    let secret = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";
    let url = receiver.url();
    let hub = TestHub::start_with(|c| {
        c.webhooks.allow_cidrs = vec!["127.0.0.1/32".into()];
        c.plugins.allowlist = vec!["webhook".into()];
        c.plugins.config.insert(
            "webhook".into(),
            json!({ "url": url, "secret": secret, "event_types": ["token.created"], "retry_max": 3, "timeout": 2 }),
        );
    })
    .await;
    hub.make_token_events(1).await;
    let got = eventually(Duration::from_secs(15), "three attempts", || async {
        let r = receiver.received();
        (r.len() >= 3).then_some(r)
    })
    .await;
    assert_eq!(
        got.len(),
        3,
        "two failures, then success, then nothing more"
    );
    let event_id = hub.events("event_type=token.created").await[0]["event_id"]
        .as_str()
        .unwrap()
        .to_string();
    for r in &got {
        let h = |name: &str| {
            r.headers
                .get(name)
                .unwrap_or_else(|| panic!("no {name}"))
                .to_str()
                .unwrap()
                .to_string()
        };
        assert_eq!(h("content-type"), "application/json");
        assert!(h("user-agent").starts_with("ServerMonitor-Webhook/"));
        assert_eq!(h("x-sm-event-id"), event_id);
        assert_eq!(h("x-sm-event-type"), "token.created");
        assert_eq!(h("webhook-id"), event_id);
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["event_id"], event_id.as_str());

        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(&r.body);
        assert_eq!(
            h("x-sm-signature"),
            format!("sha256={}", hex::encode(mac.finalize().into_bytes()))
        );

        let key = base64::engine::general_purpose::STANDARD
            .decode(&secret[6..])
            .unwrap();
        let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
        mac.update(format!("{}.{}.", event_id, h("webhook-timestamp")).as_bytes());
        mac.update(&r.body);
        let expected =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        assert_eq!(h("webhook-signature"), format!("v1,{expected}"));
    }
    // The plugin counts the event once the receiver's answer is in: wait for it.
    let webhook = eventually(Duration::from_secs(5), "the event counted", || async {
        let webhook = hub.plugin_status("webhook").await;
        (webhook["handled"] == 1).then_some(webhook)
    })
    .await;
    assert_eq!(webhook["event_types"], json!(["token.created"]));
}

#[tokio::test]
async fn every_event_reaches_the_plugins_after_a_kill_9_during_dispatch() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("seen.jsonl");
    let plugin = json!({
        "command": "sh",
        "args": ["-c", format!("sleep 0.1; cat >> {}", out.display())],
        "max_concurrency": 1,
    })
    .to_string();
    let env = [
        ("SMON_ADMIN_PASSWORD", ADMIN_PASSWORD),
        ("PLUGINS_ALLOWLIST", "exec"),
        ("PLUGIN_EXEC_CONFIG", plugin.as_str()),
    ];
    let (mut child, base, _) = spawn_serve_with(dir.path(), &env);
    let (client, token) = admin_session(&base, ADMIN_PASSWORD).await;
    for i in 0..30 {
        let resp = client
            .post(format!("{base}/api/users/me/tokens"))
            .bearer_auth(&token)
            .json(&json!({ "name": format!("k{i}") }))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    // Kill the hub while the slow plugin is part-way through the backlog.
    let deadline = Instant::now() + Duration::from_secs(10);
    while lines(&out).len() < 3 {
        assert!(Instant::now() < deadline, "the plugin never started");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let before = lines(&out).len();
    assert!(
        before < 33,
        "the backlog was finished before the kill ({before}); the test proves nothing"
    );

    let (mut child, base, _) = spawn_serve_with(dir.path(), &env);
    let logs: Value = client
        .get(format!("{base}/api/audit-logs?limit=1000"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let all: BTreeSet<String> = logs["logs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["event_id"].as_str().unwrap().to_string())
        .collect();
    assert!(all.len() >= 32, "{}", all.len());
    eventually(
        Duration::from_secs(30),
        "every event at the plugin after the restart",
        || async {
            let seen: BTreeSet<String> = lines(&out)
                .iter()
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .map(|e| e["event_id"].as_str().unwrap().to_string())
                .collect();
            all.is_subset(&seen).then_some(())
        },
    )
    .await;
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());
}

#[tokio::test]
async fn the_documented_python_exec_plugin_works_as_described() {
    let example = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/examples/exec_plugin.py"
    );
    let scratch = tempfile::tempdir().unwrap();
    let log = scratch.path().join("example.log");
    let log_path = log.display().to_string();
    let hub = TestHub::start_with(|c| {
        c.plugins.allowlist = vec!["example".into()];
        c.plugins.config.insert(
            "example".into(),
            json!({ "type": "exec", "command": "python3", "args": [example], "env": { "SMON_EXAMPLE_LOG": log_path } }),
        );
    })
    .await;
    hub.try_login("ghost", "wrong-password").await;
    hub.make_token_events(2).await;
    let events = hub.events("limit=1000").await;
    let written = eventually(
        Duration::from_secs(15),
        "a line per event in the example's log",
        || async {
            let got = lines(&log);
            (got.len() >= events.len()).then_some(got)
        },
    )
    .await;
    for e in &events {
        let id = e["event_id"].as_str().unwrap();
        let line = written
            .iter()
            .find(|l| l.contains(id))
            .unwrap_or_else(|| panic!("{id} not logged"));
        assert!(
            line.contains(e["event_type"].as_str().unwrap())
                && line.contains(e["severity"].as_str().unwrap()),
            "{line}"
        );
    }
    let example = hub.plugin_status("example").await;
    assert_eq!(
        (example["kind"].as_str(), example["failed"].as_u64()),
        (Some("exec"), Some(0)),
        "{example}"
    );
}

#[cfg(target_os = "linux")]
#[tokio::test]
async fn an_exec_timeout_kills_everything_the_program_started() {
    let scripts = tempfile::tempdir().unwrap();
    let pid_file = scripts.path().join("grandchild.pid");
    let script = write_script(
        scripts.path(),
        "linger.sh",
        &format!(
            "cat > /dev/null\nsleep 300 &\necho $! > {}\nwait",
            pid_file.display()
        ),
    );
    let hub = TestHub::start_with(|c| {
        c.plugins.allowlist = vec!["exec".into()];
        c.plugins.config.insert(
            "exec".into(),
            json!({ "command": script, "timeout": 1, "event_types": ["token.created"] }),
        );
    })
    .await;
    hub.make_token_events(1).await;
    let failed = eventually(Duration::from_secs(10), "the exec timeout", || async {
        let exec = hub.plugin_status("exec").await;
        (exec["failed"] == 1).then_some(exec)
    })
    .await;
    assert!(
        failed["last_error"]
            .as_str()
            .unwrap()
            .contains("timed out after 1 s"),
        "{failed}"
    );
    let pid = std::fs::read_to_string(&pid_file)
        .unwrap()
        .trim()
        .to_string();
    eventually(
        Duration::from_secs(5),
        "the grandchild to be gone",
        || async {
            // A killed process may linger as a zombie until reaped; either way it no longer runs.
            let status = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            (status.is_empty() || status.contains(") Z ")).then_some(())
        },
    )
    .await;
}
