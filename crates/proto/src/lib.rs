//! The agent protocol, version 1: what an agent sends to the hub and what the hub answers.
//!
//! Documented for people in `docs/AGENT_PROTOCOL.md`. Fields are only ever added; a receiver
//! ignores fields it does not know, so a newer agent talks to an older hub and the reverse.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

/// The protocol version this crate speaks; it is also the `v1` in the paths.
pub const PROTOCOL_VERSION: u32 = 1;
/// Path of the report endpoint.
pub const REPORT_PATH: &str = "/api/agent/v1/report";
/// Path of the enrollment endpoint.
pub const ENROLL_PATH: &str = "/api/agent/v1/enroll";
/// Largest report body the hub accepts, in bytes.
pub const MAX_REPORT_BYTES: usize = 256 * 1024;
/// Most samples one report may carry (backfill sends several reports).
pub const MAX_SAMPLES_PER_REPORT: usize = 360;
/// The request the hub makes when it wants the agent's inventory.
pub const REQUEST_INVENTORY: &str = "inventory";
/// Most entries in one list of a sample or an inventory (filesystems, interfaces, sensors,
/// addresses); per-core CPU allows four times as many.
pub const MAX_LIST_ITEMS: usize = 1024;
/// Longest text field (mount point, interface name, label, OS name…), in bytes; no control
/// characters.
pub const MAX_TEXT_BYTES: usize = 1024;
/// Largest stdout or stderr a task result carries, in bytes (the rest is cut).
pub const MAX_TASK_OUTPUT: usize = 64 * 1024;

/// Path of a task's status updates (`{id}` is the task id).
pub fn task_update_path(task_id: &str) -> String {
    format!("/api/agent/v1/tasks/{task_id}/result")
}

/// `POST /api/agent/v1/report`, authenticated by `Authorization: Bearer <agent token>`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Report {
    /// Protocol version the agent speaks.
    pub protocol: u32,
    /// The agent's version.
    pub agent_version: String,
    /// How often the agent collects, in seconds (the hub's offline detection counts in it).
    pub interval_secs: u32,
    /// The interval of the agent's own configuration, which it returns to when the hub stops
    /// asking for another one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default_interval_secs: Option<u32>,
    /// Samples oldest first: one normally, many when backfilling after an outage.
    pub samples: Vec<Sample>,
    /// Sent at start, when it changed, and when the hub asked for it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    /// Whether this agent runs tasks (its own `allow_tasks`).
    #[serde(default)]
    pub tasks_enabled: bool,
}

/// One collection of metrics.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Sample {
    /// When the sample was taken (RFC 3339, UTC).
    pub ts: DateTime<Utc>,
    /// CPU busy, percent of all cores (0–100).
    pub cpu_percent: f64,
    /// CPU busy per logical core, percent.
    #[serde(default)]
    pub cpu_per_core: Vec<f64>,
    /// Load average over 1, 5 and 15 minutes.
    pub load: [f64; 3],
    pub memory: Memory,
    pub swap: Swap,
    /// Each real filesystem (pseudo filesystems are skipped).
    #[serde(default)]
    pub filesystems: Vec<FilesystemUsage>,
    pub disk_io: DiskIo,
    /// Each network interface (loopback excluded).
    #[serde(default)]
    pub network: Vec<InterfaceRates>,
    /// Sum over `network`.
    pub network_total: Rates,
    pub uptime_secs: u64,
    pub process_count: u32,
    /// Sensors, when the machine has any.
    #[serde(default)]
    pub temperatures: Vec<Temperature>,
}

/// Memory in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Memory {
    pub total: u64,
    pub used: u64,
    pub available: u64,
}

/// Swap in bytes.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Swap {
    pub total: u64,
    pub used: u64,
}

/// Space on one mounted filesystem, in bytes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FilesystemUsage {
    pub mount: String,
    pub fs_type: String,
    pub total: u64,
    pub used: u64,
}

/// Block device throughput since the previous sample, bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct DiskIo {
    pub read_bps: f64,
    pub write_bps: f64,
}

/// Receive and transmit rates, bytes per second.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Rates {
    pub rx_bps: f64,
    pub tx_bps: f64,
}

/// One interface's rates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct InterfaceRates {
    pub name: String,
    pub rx_bps: f64,
    pub tx_bps: f64,
}

/// One sensor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Temperature {
    pub label: String,
    pub celsius: f64,
}

/// What the machine is.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct Inventory {
    pub hostname: String,
    pub os_name: String,
    pub os_version: String,
    pub kernel: String,
    pub arch: String,
    pub cpu_model: String,
    pub cpu_cores: u32,
    pub cpu_threads: u32,
    pub memory_total: u64,
    #[serde(default)]
    pub filesystems: Vec<FilesystemInfo>,
    #[serde(default)]
    pub ip_addresses: Vec<String>,
    pub agent_version: String,
}

/// A filesystem as the inventory lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct FilesystemInfo {
    pub mount: String,
    pub fs_type: String,
    pub device: String,
    pub total: u64,
}

/// The hub's answer to an accepted report.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ReportResponse {
    /// How many samples were stored.
    pub accepted: usize,
    /// The interval the agent should use from now on, in seconds.
    pub interval_secs: u32,
    /// Things the hub asks for, e.g. [`REQUEST_INVENTORY`]; unknown requests are ignored.
    #[serde(default)]
    pub requests: Vec<String>,
    /// Tasks to run. The hub repeats a task until the agent has reported on it, so an agent
    /// ignores ids it already knows.
    #[serde(default)]
    pub tasks: Vec<TaskAssignment>,
    /// Ids of running tasks to cancel.
    #[serde(default)]
    pub cancel: Vec<String>,
}

/// A shell command the hub asks the agent to run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TaskAssignment {
    pub id: String,
    /// Run with `sh -c`.
    pub command: String,
    /// Killed (its whole process group) after this many seconds.
    pub timeout_secs: u32,
}

/// Where a task stands, as the agent reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum TaskOutcome {
    /// Started.
    Running,
    /// Ran to its end; `exit_code` says how.
    Exited,
    /// Killed at its timeout.
    Timeout,
    /// Killed because the hub cancelled it.
    Cancelled,
    /// Not run: the agent's configuration does not allow it.
    Rejected,
    /// Could not be started.
    Error,
}

/// `POST /api/agent/v1/tasks/{id}/result`: a task started or ended.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct TaskUpdate {
    pub outcome: TaskOutcome,
    #[serde(default)]
    pub exit_code: Option<i32>,
    /// At most [`MAX_TASK_OUTPUT`] bytes.
    #[serde(default)]
    pub stdout: String,
    #[serde(default)]
    pub stderr: String,
    /// Whether output was cut at the bound.
    #[serde(default)]
    pub truncated: bool,
    /// Why a task was rejected or could not start.
    #[serde(default)]
    pub error: Option<String>,
    pub at: DateTime<Utc>,
}

/// `POST /api/agent/v1/enroll`: an agent registers itself with the hub's enrollment token.
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct EnrollRequest {
    pub enrollment_token: String,
    /// Server name; the agent sends its hostname unless told otherwise.
    pub name: String,
    #[serde(default)]
    pub tags: Vec<String>,
}

/// The hub's answer to an enrollment: the server it created and its agent token (shown once).
#[derive(Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct EnrollResponse {
    pub server_id: String,
    pub name: String,
    pub agent_token: String,
}

/// An error answer (any 4xx or 5xx), as everywhere in the hub's API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[cfg_attr(feature = "schema", derive(utoipa::ToSchema))]
pub struct ErrorBody {
    pub error: String,
}

// The tokens are secrets: debug output names the request, never them.
impl std::fmt::Debug for EnrollRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollRequest")
            .field("enrollment_token", &"<redacted>")
            .field("name", &self.name)
            .field("tags", &self.tags)
            .finish()
    }
}

impl std::fmt::Debug for EnrollResponse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EnrollResponse")
            .field("server_id", &self.server_id)
            .field("name", &self.name)
            .field("agent_token", &"<redacted>")
            .finish()
    }
}
