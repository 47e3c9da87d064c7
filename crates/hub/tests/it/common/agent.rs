//! Agents for tests: the real `smon-agent` binary as a process, and hand-made reports.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use smon_proto::{
    DiskIo, FilesystemUsage, Inventory, Memory, PROTOCOL_VERSION, Rates, Report, Sample, Swap,
};

use super::{TestHub, send};

/// The `smon-agent` binary, built once per test run. Integration tests can only name their
/// own package's binaries, so the agent's is built here with the same cargo and profile.
pub fn agent_binary() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            let exe = std::env::current_exe().expect("test binary path");
            let profile_dir = exe
                .parent()
                .and_then(|d| d.parent())
                .expect("target/<profile>");
            let mut cmd = Command::new(env!("CARGO"));
            cmd.args(["build", "-q", "-p", "smon-agent", "--bin", "smon-agent"])
                .current_dir(env!("CARGO_MANIFEST_DIR"));
            if profile_dir.file_name().is_some_and(|n| n == "release") {
                cmd.arg("--release");
            }
            let status = cmd.status().expect("cargo runs");
            assert!(status.success(), "building smon-agent failed");
            let bin = profile_dir.join("smon-agent");
            assert!(bin.exists(), "no agent binary at {}", bin.display());
            bin
        })
        .clone()
}

/// A running agent process, killed when dropped.
pub struct AgentProcess {
    pub child: Child,
}

impl AgentProcess {
    /// Start the agent against `base` with `token`, sampling every second and retrying at
    /// least every second, plus `extra` arguments.
    pub fn start(base: &str, token: &str, extra: &[&str]) -> AgentProcess {
        let child = Command::new(agent_binary())
            .args(["--hub", base, "--interval", "1", "--max-backoff-secs", "1"])
            .args(extra)
            .env("SMON_AGENT_TOKEN", token)
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .spawn()
            .expect("agent starts");
        AgentProcess { child }
    }

    /// An agent without a token (for enrollment), with `args`.
    pub fn start_bare(args: &[&str]) -> Command {
        let mut cmd = Command::new(agent_binary());
        cmd.args(args)
            .env_remove("SMON_AGENT_TOKEN")
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null());
        cmd
    }

    /// Kill -9.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for AgentProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A plausible sample taken at `ts` with `cpu` percent busy.
pub fn sample(ts: DateTime<Utc>, cpu: f64) -> Sample {
    Sample {
        ts,
        cpu_percent: cpu,
        cpu_per_core: vec![cpu, cpu],
        load: [0.5, 0.4, 0.3],
        memory: Memory {
            total: 8_000,
            used: 2_000,
            available: 6_000,
        },
        swap: Swap { total: 0, used: 0 },
        filesystems: vec![FilesystemUsage {
            mount: "/".into(),
            fs_type: "ext4".into(),
            total: 1_000,
            used: 250,
        }],
        disk_io: DiskIo {
            read_bps: 10.0,
            write_bps: 20.0,
        },
        network: vec![],
        network_total: Rates {
            rx_bps: 100.0,
            tx_bps: 50.0,
        },
        uptime_secs: 1000,
        process_count: 42,
        temperatures: vec![],
    }
}

/// A small inventory.
pub fn inventory(hostname: &str) -> Inventory {
    Inventory {
        hostname: hostname.into(),
        os_name: "Debian GNU/Linux".into(),
        os_version: "12".into(),
        kernel: "6.1.0".into(),
        arch: "x86_64".into(),
        cpu_model: "Test CPU".into(),
        cpu_cores: 2,
        cpu_threads: 4,
        memory_total: 8_000,
        filesystems: vec![],
        ip_addresses: vec!["192.0.2.10".into()],
        agent_version: "test".into(),
    }
}

/// A report of these samples.
pub fn report(samples: Vec<Sample>, inventory: Option<Inventory>) -> Value {
    serde_json::to_value(Report {
        protocol: PROTOCOL_VERSION,
        agent_version: "0.0.0-test".into(),
        interval_secs: 1,
        default_interval_secs: None,
        samples,
        inventory,
        tasks_enabled: false,
    })
    .unwrap()
}

impl TestHub {
    /// Create a server as the admin: (server id, agent token).
    pub async fn create_server(&self, name: &str, tags: &[&str]) -> (String, String) {
        let (status, body) = self
            .send_json(
                Method::POST,
                "/api/servers",
                &self.admin_token,
                json!({ "name": name, "tags": tags }),
            )
            .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        (
            body["server_id"].as_str().unwrap().to_string(),
            body["agent_token"].as_str().unwrap().to_string(),
        )
    }

    /// Post a report with an agent token.
    pub async fn post_report(&self, agent_token: &str, body: &Value) -> (StatusCode, Value) {
        send(
            self.client
                .post(self.url(smon_proto::REPORT_PATH))
                .bearer_auth(agent_token)
                .json(body),
        )
        .await
    }

    /// A server as the admin sees it.
    pub async fn server(&self, id: &str) -> Value {
        let (status, body) = self
            .get(&format!("/api/servers/{id}"), &self.admin_token)
            .await;
        assert_eq!(status, StatusCode::OK, "{body}");
        body
    }
}
