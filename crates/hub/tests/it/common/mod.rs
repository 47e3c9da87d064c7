//! The shared harness: a real hub on port 0 with a temporary SQLite file (or a fresh
//! PostgreSQL database), and HTTP helpers.

#![allow(dead_code)]

pub mod agent;
pub mod pg;
pub mod process;
pub mod receiver;

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use smon_hub::{Config, Hub};
use tempfile::TempDir;

/// Password of the first admin in every test hub.
pub const ADMIN_PASSWORD: &str = "admin-password-for-tests";
/// The keys of every event, in the order of the contract.
pub const EVENT_KEYS: [&str; 14] = [
    "event_id",
    "event_type",
    "timestamp",
    "user_id",
    "username",
    "server_id",
    "server_name",
    "target_type",
    "target_id",
    "action",
    "meta",
    "ip",
    "user_agent",
    "severity",
];

/// Password given to the users the helpers create.
pub const USER_PASSWORD: &str = "user-password-for-tests";

/// A hub running in this process, its data directory and an admin session.
pub struct TestHub {
    hub: Option<Hub>,
    dir: TempDir,
    pub base: String,
    pub client: Client,
    pub admin_token: String,
}

/// The configuration every test hub starts from: loopback, port 0, generous login limits.
pub fn test_config(data_dir: &Path) -> Config {
    let mut config = Config {
        listen: "127.0.0.1:0".into(),
        data_dir: data_dir.to_path_buf(),
        admin_password: ADMIN_PASSWORD.into(),
        ..Config::default()
    };
    config.auth.login_ip_attempts = 10_000;
    config.auth.login_user_attempts = 10_000;
    // Tests make many requests from one address; the rate-limit tests set their own limits.
    config.rate_limits.api_per_minute = 1_000_000;
    // The hub's own agent would add a server and events to every test; its test turns it on.
    config.local_agent = false;
    config.fleet.local_agent_interval_secs = 1;
    // Offline detection tests cannot wait out the grace a restarted hub gives agents.
    config.fleet.startup_grace_secs = 0;
    config
}

impl TestHub {
    /// A hub with the test configuration.
    pub async fn start() -> TestHub {
        Self::start_with(|_| {}).await
    }

    /// A hub with the test configuration changed by `adjust`.
    pub async fn start_with(adjust: impl FnOnce(&mut Config)) -> TestHub {
        let dir = tempfile::tempdir().expect("temp dir");
        Self::start_in(dir, adjust).await
    }

    /// A hub on an existing data directory (to test restarts).
    pub async fn start_in(dir: TempDir, adjust: impl FnOnce(&mut Config)) -> TestHub {
        let mut config = test_config(dir.path());
        if pg::suite_on_postgres() {
            config.database_url = pg::database_of(dir.path());
        }
        adjust(&mut config);
        let hub = Hub::start(config).await.expect("hub starts");
        Self::start_hub(hub, Some(dir)).await
    }

    /// Wrap a started hub (its data directory kept by the caller when `dir` is `None`).
    pub async fn start_hub(hub: Hub, dir: Option<TempDir>) -> TestHub {
        let base = format!("http://{}", hub.local_addr());
        let client = Client::builder()
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let dir = dir.unwrap_or_else(|| tempfile::tempdir().expect("temp dir"));
        let mut test_hub = TestHub {
            hub: Some(hub),
            dir,
            base,
            client,
            admin_token: String::new(),
        };
        test_hub.admin_token = test_hub.login("admin", ADMIN_PASSWORD).await;
        test_hub
    }

    /// Stop the hub cleanly and hand back its data directory.
    pub async fn stop(mut self) -> TempDir {
        let hub = self.hub.take().expect("running");
        hub.shutdown(Duration::from_secs(4))
            .await
            .expect("clean shutdown");
        self.dir
    }

    /// The data directory.
    pub fn data_dir(&self) -> PathBuf {
        self.dir.path().to_path_buf()
    }

    /// The hub's PostgreSQL database, when the suite runs on PostgreSQL.
    pub fn postgres_url(&self) -> Option<String> {
        std::fs::read_to_string(self.dir.path().join(pg::URL_FILE)).ok()
    }

    /// The text values of the first column `sql` selects, read straight from the hub's
    /// database (SQLite file or PostgreSQL), bypassing the API.
    pub async fn db_texts(&self, sql: &str) -> Vec<String> {
        match self.postgres_url() {
            Some(url) => {
                let db = sqlx::PgPool::connect(&url).await.unwrap();
                let v = sqlx::query_scalar(sql).fetch_all(&db).await.unwrap();
                db.close().await;
                v
            }
            None => {
                let url = format!(
                    "sqlite://{}?mode=ro",
                    self.data_dir().join("smon.db").display()
                );
                let db = sqlx::SqlitePool::connect(&url).await.unwrap();
                let v = sqlx::query_scalar(sql).fetch_all(&db).await.unwrap();
                db.close().await;
                v
            }
        }
    }

    /// How many rows `table` holds, read straight from the hub's database.
    pub async fn db_count(&self, table: &str) -> i64 {
        let n = self
            .db_texts(&format!("SELECT CAST(COUNT(*) AS TEXT) FROM {table}"))
            .await;
        n[0].parse().unwrap()
    }

    /// The absolute URL of `path`.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// A request, with a bearer token when one is given.
    pub fn request(&self, method: Method, path: &str, token: Option<&str>) -> RequestBuilder {
        let req = self.client.request(method, self.url(path));
        match token {
            Some(t) => req.bearer_auth(t),
            None => req,
        }
    }

    /// `GET path` as `token`, returning status and JSON body.
    pub async fn get(&self, path: &str, token: &str) -> (StatusCode, Value) {
        send(self.request(Method::GET, path, Some(token))).await
    }

    /// `method path` with a JSON body as `token`, returning status and JSON body.
    pub async fn send_json(
        &self,
        method: Method,
        path: &str,
        token: &str,
        body: Value,
    ) -> (StatusCode, Value) {
        send(self.request(method, path, Some(token)).json(&body)).await
    }

    /// Log in and return the session token, panicking on failure.
    pub async fn login(&self, username: &str, password: &str) -> String {
        let (status, body) = self.try_login(username, password).await;
        assert_eq!(status, StatusCode::OK, "login of {username} failed: {body}");
        body["token"]
            .as_str()
            .expect("token in login answer")
            .to_string()
    }

    /// Attempt a login.
    pub async fn try_login(&self, username: &str, password: &str) -> (StatusCode, Value) {
        let req = self
            .request(Method::POST, "/api/auth/login", None)
            .json(&json!({ "username": username, "password": password }));
        send(req).await
    }

    /// Create a user with `role` (as admin) and return its id.
    pub async fn create_user(&self, username: &str, role: &str) -> String {
        let (status, body) = self
            .send_json(
                Method::POST,
                "/api/users",
                &self.admin_token,
                json!({ "username": username, "password": USER_PASSWORD, "role": role }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "creating {username}: {body}");
        body["user_id"].as_str().unwrap().to_string()
    }

    /// Create a user with `role` and return a session token for it.
    pub async fn token_for_role(&self, role: &str) -> String {
        let username = format!("{role}-{}", uuid_suffix());
        self.create_user(&username, role).await;
        self.login(&username, USER_PASSWORD).await
    }

    /// `n` `token.created` events (personal tokens made by admin): events without hashing.
    pub async fn make_token_events(&self, n: usize) {
        for i in 0..n {
            let body = json!({ "name": format!("t{i}") });
            let (status, answer) = self
                .send_json(
                    Method::POST,
                    "/api/users/me/tokens",
                    &self.admin_token,
                    body,
                )
                .await;
            assert_eq!(status, StatusCode::CREATED, "{answer}");
        }
    }

    /// One plugin's entry in `GET /api/plugins` (as admin).
    pub async fn plugin_status(&self, name: &str) -> Value {
        let (status, body) = self.get("/api/plugins", &self.admin_token).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["plugins"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap_or_else(|| panic!("no plugin {name} in {body}"))
            .clone()
    }

    /// Events of the audit log matching a query string (as admin), newest first.
    pub async fn events(&self, query: &str) -> Vec<Value> {
        let (status, body) = self
            .get(&format!("/api/audit-logs?{query}"), &self.admin_token)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body["logs"].as_array().unwrap().clone()
    }
}

/// Send a request and read its JSON body (`Value::Null` when the body is not JSON).
pub async fn send(req: RequestBuilder) -> (StatusCode, Value) {
    let resp = req.send().await.expect("request reaches the hub");
    json_of(resp).await
}

/// Status and JSON body of a response.
pub async fn json_of(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.expect("body");
    (status, serde_json::from_str(&text).unwrap_or(Value::Null))
}

fn uuid_suffix() -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Poll `check` until it returns `Some`, failing after `within`.
pub async fn eventually<T, F, Fut>(within: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Assert an error answer: the status and an `error` message containing `needle`.
#[track_caller]
pub fn assert_error(got: &(StatusCode, Value), status: StatusCode, needle: &str) {
    assert_eq!(got.0, status, "unexpected status, body {}", got.1);
    let message = got.1["error"]
        .as_str()
        .unwrap_or_else(|| panic!("no error message in {}", got.1));
    assert!(
        message.to_lowercase().contains(&needle.to_lowercase()),
        "error {message:?} does not mention {needle:?}"
    );
}
