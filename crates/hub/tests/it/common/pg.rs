//! PostgreSQL for tests: a fresh database per hub (or per group of hubs sharing one).
//!
//! The server is `SMON_TEST_POSTGRES` (default `postgres://postgres@127.0.0.1:5432/postgres`),
//! which `.ci/run` provides. Tests that need it are `#[ignore]`d in plain `cargo test`.
//! `SMON_TEST_BACKEND=postgres` runs every hub of the suite on PostgreSQL too.

/// The server's maintenance URL.
pub fn server_url() -> String {
    std::env::var("SMON_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// Whether every test hub should use PostgreSQL.
pub fn suite_on_postgres() -> bool {
    std::env::var("SMON_TEST_BACKEND").is_ok_and(|b| b == "postgres")
}

/// Create an empty database and return its URL. Databases are named `smon_test_<uuid>`;
/// they are left behind for post-mortems (`.ci/run` drops them at the end). Synchronous
/// (psql), for the harness's plain functions too.
pub fn create_database() -> String {
    let server = server_url();
    let name = format!("smon_test_{}", uuid::Uuid::now_v7().simple());
    let out = std::process::Command::new("psql")
        .args([
            server.as_str(),
            "-q",
            "-c",
            &format!("CREATE DATABASE {name}"),
        ])
        .output()
        .expect("psql runs");
    assert!(
        out.status.success(),
        "PostgreSQL at {server} is needed by this test: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let base = server.rsplit_once('/').map_or(server.as_str(), |(b, _)| b);
    format!("{base}/{name}")
}

/// [`create_database`] for async tests.
pub async fn fresh_database() -> String {
    tokio::task::spawn_blocking(create_database)
        .await
        .expect("database creation")
}

/// The database of a test's data directory: made on first use and remembered in the
/// directory, so a hub restarted on it, or the CLI run on it, finds its data.
pub fn database_of(dir: &std::path::Path) -> String {
    let file = dir.join(URL_FILE);
    if let Ok(url) = std::fs::read_to_string(&file) {
        return url;
    }
    let url = create_database();
    std::fs::write(&file, &url).expect("remember the test database");
    url
}

/// The file in a data directory naming its PostgreSQL database.
pub const URL_FILE: &str = "postgres-url";
