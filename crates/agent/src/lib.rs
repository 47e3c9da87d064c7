//! Server Monitor agent: collects metrics and inventory and pushes them to the hub.
//!
//! The library holds everything but the command line, so the hub can run the same agent
//! in-process for its own machine.

pub mod collect;
pub mod config;
pub mod http;
pub mod push;
pub mod tasks;

/// The agent's version, sent with every report.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
