//! The real `smon` binary as a child process, and other processes the tests need.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Stop writes to the database of the data directory `dir` from another process, as a stuck
/// backup or a full disk would: SQLite's exclusive lock (Python's sqlite3 module), or on
/// PostgreSQL an EXCLUSIVE lock on every table (reads still pass).
pub fn hold_write_lock(dir: &Path) -> Child {
    if let Ok(url) = std::fs::read_to_string(dir.join(super::pg::URL_FILE)) {
        return hold_postgres_write_lock(&url);
    }
    let db = dir.join("smon.db");
    let mut child = Command::new("python3")
        .arg("-c")
        .arg(
            "import sqlite3,sys,time\nc=sqlite3.connect(sys.argv[1],isolation_level=None)\n\
             c.execute('BEGIN EXCLUSIVE')\nprint('locked',flush=True)\ntime.sleep(60)",
        )
        .arg(&db)
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

fn hold_postgres_write_lock(url: &str) -> Child {
    let tables = "users, auth_tokens, events, health_probe, webhooks, webhook_jobs, \
                  webhook_deliveries, servers, inventory, metrics_raw, metrics_1m, metrics_1h, \
                  tasks, alert_rules, alerts, hub_leases";
    let mut child = Command::new("psql")
        // The server notices the killed client within 100 ms and releases the locks.
        .args([
            url,
            "-q",
            "-At",
            "-c",
            "SET client_connection_check_interval = 100",
        ])
        .args(["-c", "BEGIN"])
        .args(["-c", &format!("LOCK TABLE {tables} IN EXCLUSIVE MODE")])
        .args(["-c", "\\echo locked", "-c", "SELECT pg_sleep(60)"])
        .stdout(Stdio::piped())
        .spawn()
        .expect("psql runs");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "locked");
    child
}

/// The `smon` binary with its own data directory.
pub fn smon(dir: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_smon"));
    cmd.current_dir(dir)
        .env("SMON_DATA_DIR", dir)
        .env_remove("SMON_ADMIN_PASSWORD")
        .env("SMON_LISTEN", "127.0.0.1:0")
        .env("SMON_LOCAL_AGENT", "false")
        .env("RUST_LOG", "warn");
    if super::pg::suite_on_postgres() {
        cmd.env("SMON_DATABASE_URL", super::pg::database_of(dir));
    }
    cmd
}

/// Start `smon serve` and read its banner: (child, base URL, printed admin password).
pub fn spawn_serve(dir: &Path) -> (Child, String, Option<String>) {
    spawn_serve_with(dir, &[])
}

/// Like [`spawn_serve`] with extra environment variables.
pub fn spawn_serve_with(dir: &Path, env: &[(&str, &str)]) -> (Child, String, Option<String>) {
    let mut child = smon(dir)
        .arg("serve")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .spawn()
        .expect("smon starts");
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let (mut url, mut password) = (None, None);
    for line in lines.by_ref() {
        let line = line.unwrap();
        if let Some(at) = line.find("listening on ") {
            url = Some(line[at + 13..].trim().to_string());
        }
        if let Some(at) = line.find("with password: ") {
            password = Some(line[at + 15..].trim().to_string());
        }
        if line.starts_with("API login:") {
            break;
        }
    }
    // Keep reading so that the hub never writes into a closed pipe.
    std::thread::spawn(move || lines.for_each(drop));
    (child, url.expect("banner names the URL"), password)
}

pub fn sigterm(child: &Child) {
    let status = Command::new("kill")
        .arg("-TERM")
        .arg(child.id().to_string())
        .status()
        .unwrap();
    assert!(status.success());
}

pub fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if start.elapsed() > within {
            child.kill().ok();
            panic!("smon did not exit within {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Log in to a hub started with [`spawn_serve_with`] (and `SMON_ADMIN_PASSWORD`) as admin.
pub async fn admin_session(base: &str, password: &str) -> (reqwest::Client, String) {
    let client = reqwest::Client::new();
    let login: serde_json::Value = client
        .post(format!("{base}/api/auth/login"))
        .json(&serde_json::json!({ "username": "admin", "password": password }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let token = login["token"].as_str().expect("login succeeds").to_string();
    (client, token)
}
