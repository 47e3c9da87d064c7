//! Starting, stopping and restarting the hub; the real binary; readiness; the OpenAPI document.

use std::io::Write;
use std::process::Stdio;
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::json;

use crate::common::process::*;
use crate::common::*;

#[tokio::test]
async fn data_survives_a_restart() {
    let hub = TestHub::start().await;
    hub.create_user("frank", "operator").await;
    let (_, pat) = hub
        .send_json(
            Method::POST,
            "/api/users/me/tokens",
            &hub.admin_token,
            json!({ "name": "keep" }),
        )
        .await;
    let pat = pat["token"].as_str().unwrap().to_string();
    let session = hub.admin_token.clone();
    let events_before = hub.events("limit=1000").await;
    let dir = hub.stop().await;

    let hub = TestHub::start_in(dir, |_| {}).await;
    hub.login("frank", USER_PASSWORD).await;
    assert_eq!(
        hub.get("/api/auth/verify", &pat).await.0,
        StatusCode::OK,
        "personal token survives"
    );
    assert_eq!(
        hub.get("/api/auth/verify", &session).await.0,
        StatusCode::OK,
        "session survives"
    );
    let (_, users) = hub.get("/api/users", &hub.admin_token).await;
    assert_eq!(users["count"], 2, "no second admin created on restart");
    let events_after = hub.events("limit=1000").await;
    assert!(
        events_before.iter().all(|e| events_after.contains(e)),
        "events kept intact"
    );
}

#[tokio::test]
async fn health_and_readiness_answer_without_a_token() {
    let hub = TestHub::start().await;
    let (status, health) = send(hub.request(Method::GET, "/api/health", None)).await;
    assert_eq!(
        (status, health["status"].as_str()),
        (StatusCode::OK, Some("ok"))
    );
    assert_eq!(health["version"], env!("CARGO_PKG_VERSION"));
    let (status, ready) = send(hub.request(Method::GET, "/api/ready", None)).await;
    assert_eq!(
        (status, ready["status"].as_str()),
        (StatusCode::OK, Some("ready"))
    );
}

#[tokio::test]
async fn readiness_is_503_while_the_database_refuses_writes() {
    let hub = TestHub::start().await;
    // Another process holds the write lock (as a stuck backup or a full disk would stop writes).
    let mut locker = hold_write_lock(&hub.data_dir());
    let got = send(hub.request(Method::GET, "/api/ready", None)).await;
    locker.kill().ok();
    locker.wait().ok();
    assert_error(&got, StatusCode::SERVICE_UNAVAILABLE, "database");
    // Liveness does not depend on the database.
    assert_eq!(
        send(hub.request(Method::GET, "/api/health", None)).await.0,
        StatusCode::OK
    );
    eventually(Duration::from_secs(10), "ready again", || async {
        (send(hub.request(Method::GET, "/api/ready", None)).await.0 == StatusCode::OK).then_some(())
    })
    .await;
}

#[tokio::test]
async fn the_binary_prints_a_one_time_admin_password_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, password) = spawn_serve(dir.path());
    let password = password.expect("first start prints the admin password");
    assert!(password.len() >= 16);
    let client = reqwest::Client::new();
    let login = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({ "username": "admin", "password": password }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::OK);

    sigterm(&child);
    let status = wait_exit(&mut child, Duration::from_secs(5));
    assert!(status.success(), "exit status {status}");

    // Second start: the same database, no new password printed.
    let (mut child, base, password) = spawn_serve(dir.path());
    assert!(password.is_none(), "the password is printed only once");
    let login = client
        .post(format!("{base}/api/auth/login"))
        .json(&json!({ "username": "admin", "password": "wrong-password" }))
        .send()
        .await
        .unwrap();
    assert_eq!(login.status(), StatusCode::UNAUTHORIZED);
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());
}

#[tokio::test]
async fn a_request_in_flight_finishes_during_shutdown() {
    let dir = tempfile::tempdir().unwrap();
    let (mut child, base, _) = spawn_serve(dir.path());
    // With the database locked by another process, a readiness check waits ~2 s for it: a
    // request that is certainly in flight when the signal arrives.
    let mut locker = hold_write_lock(dir.path());
    let slow = tokio::spawn(reqwest::get(format!("{base}/api/ready")));
    tokio::time::sleep(Duration::from_millis(500)).await;
    sigterm(&child);
    let answered = slow
        .await
        .unwrap()
        .expect("the in-flight request gets its answer");
    assert_eq!(answered.status(), StatusCode::SERVICE_UNAVAILABLE);
    let body: serde_json::Value = answered.json().await.unwrap();
    assert_eq!(
        body["error"],
        "service unavailable: database did not answer within 2 s"
    );
    locker.kill().ok();
    locker.wait().ok();
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());
    // New connections are refused once the hub has stopped.
    assert!(reqwest::get(format!("{base}/api/health")).await.is_err());
}

#[test]
fn the_cli_manages_users_on_the_same_database() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str], stdin: Option<&str>| {
        let mut child = smon(dir.path())
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        if let Some(input) = stdin {
            child
                .stdin
                .take()
                .unwrap()
                .write_all(input.as_bytes())
                .unwrap();
        }
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string()
                + &String::from_utf8_lossy(&out.stderr),
        )
    };
    let (ok, out) = run(
        &[
            "user",
            "add",
            "grace",
            "--role",
            "auditor",
            "--password-stdin",
        ],
        Some("grace-password\n"),
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["user", "add", "heidi", "--role", "admin"], None);
    assert!(ok && out.contains("password: "), "{out}");
    let (ok, out) = run(&["user", "add", "grace", "--role", "viewer"], None);
    assert!(!ok && out.contains("already taken"), "{out}");
    let (ok, out) = run(&["user", "add", "ivan", "--role", "superuser"], None);
    assert!(!ok && out.contains("unknown role"), "{out}");
    let (ok, out) = run(&["user", "list"], None);
    assert!(
        ok && out.contains("grace") && out.contains("auditor") && out.contains("heidi"),
        "{out}"
    );
    let (ok, out) = run(
        &["user", "passwd", "grace", "--password-stdin"],
        Some("another-password\n"),
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["user", "delete", "heidi"], None);
    assert!(!ok && out.contains("last enabled admin"), "{out}");
    // The harness logs in as admin below.
    let (ok, out) = run(
        &[
            "user",
            "add",
            "admin",
            "--role",
            "admin",
            "--password-stdin",
        ],
        Some(&format!("{ADMIN_PASSWORD}\n")),
    );
    assert!(ok, "{out}");
    let (ok, out) = run(&["user", "delete", "heidi"], None);
    assert!(ok, "{out}");
    let (ok, out) = run(&["user", "delete", "nobody"], None);
    assert!(!ok && out.contains("not found"), "{out}");

    // The hub started on that database serves the CLI's changes.
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let hub = TestHub::start_in(dir, |_| {}).await;
        hub.login("grace", "another-password").await;
        assert_eq!(
            hub.try_login("heidi", "whatever-pass").await.0,
            StatusCode::UNAUTHORIZED
        );
        let created = hub.events("event_type=user.created&username=grace").await;
        assert!(created.is_empty(), "CLI events carry no user");
        let created = hub.events("event_type=user.created").await;
        assert!(
            created
                .iter()
                .any(|e| e["user_agent"] == "smon cli" && e["meta"]["new_username"] == "grace")
        );
    });
}

#[test]
fn the_committed_openapi_document_matches_the_code() {
    let committed = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../docs/openapi.json"
    ))
    .expect("docs/openapi.json exists");
    let generated = smon_hub::api::openapi_json();
    assert!(
        committed == generated,
        "docs/openapi.json is stale: run `cargo run --bin smon -- openapi > docs/openapi.json`"
    );
}

#[test]
fn a_bad_configuration_is_refused_with_the_key_named() {
    let dir = tempfile::tempdir().unwrap();
    let out = smon(dir.path())
        .env("SMON_AUTH_SESSION_IDLE_SECS", "forever")
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SMON_AUTH_SESSION_IDLE_SECS"), "{err}");
}

#[test]
fn a_failed_first_start_does_not_swallow_the_admin_password() {
    let dir = tempfile::tempdir().unwrap();
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = smon(dir.path())
        .env("SMON_LISTEN", taken.local_addr().unwrap().to_string())
        .arg("serve")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("cannot listen"), "{err}");
    assert!(!String::from_utf8_lossy(&out.stdout).contains("password"));
    // The next, successful start is still the first: it creates admin and shows the password.
    let (mut child, _, password) = spawn_serve(dir.path());
    assert!(
        password.is_some(),
        "the admin password was lost with the failed start"
    );
    sigterm(&child);
    assert!(wait_exit(&mut child, Duration::from_secs(5)).success());
}
