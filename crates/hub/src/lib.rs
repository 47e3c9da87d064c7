//! Server Monitor hub: HTTP API, users and roles, the event log, backed by SQLite.

pub mod alerts;
pub mod api;
pub mod app;
pub mod auth;
pub mod cache;
pub mod cluster;
pub mod config;
pub mod error;
pub mod events;
pub mod fleet;
pub mod leader;
pub mod local_agent;
pub mod metrics;
pub mod notifications;
pub mod plugins;
pub mod secrets;
pub mod store;
pub mod system;
pub mod tasks;
pub mod ui;
pub mod users;
pub mod webhooks;
pub mod wire;

pub use app::{AppState, Hub};
pub use config::Config;

/// The hub's version, as reported by `/api/health` and the CLI.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");

/// Run a change to its end even if the request that asked for it goes away (a client that
/// hangs up drops its handler): a change that writes the database and then the memory state
/// must do both or neither.
pub(crate) async fn to_completion<T: Send + 'static>(
    change: impl std::future::Future<Output = error::Result<T>> + Send + 'static,
) -> error::Result<T> {
    tokio::spawn(change).await.unwrap_or_else(|e| {
        Err(error::Error::Internal(anyhow::anyhow!(
            "a change did not complete: {e}"
        )))
    })
}
