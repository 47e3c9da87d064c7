//! The hub under test: a `smon serve` child process with its own data directory, or an
//! existing hub given by URL.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

/// Password of the bench's admin on a hub it starts.
const ADMIN_PASSWORD: &str = "bench-admin-password";

/// A hub the bench started.
pub struct LocalHub {
    child: Child,
    pub dir: tempfile::TempDir,
    pub url: String,
    extra_env: Vec<(String, String)>,
}

/// Where the `smon` binary is: next to this one (same cargo target directory and profile).
fn smon_binary() -> anyhow::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("smon");
    if !bin.exists() {
        bail!(
            "no hub binary at {}: build both with `cargo build --release -p smon-hub -p smon-bench`",
            bin.display()
        );
    }
    Ok(bin)
}

impl LocalHub {
    /// Start a hub on a free loopback port with limits raised for load, plus `env`.
    pub fn start(env: &[(&str, &str)]) -> anyhow::Result<LocalHub> {
        let dir = tempfile::tempdir()?;
        let extra_env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        let (child, url) = spawn(dir.path(), "127.0.0.1:0", &extra_env)?;
        Ok(LocalHub {
            child,
            dir,
            url,
            extra_env,
        })
    }

    /// The hub's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kill -9, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Start again on the same data directory and address.
    pub fn restart(&mut self) -> anyhow::Result<()> {
        let addr = self.url.trim_start_matches("http://").to_string();
        let (child, url) = spawn(self.dir.path(), &addr, &self.extra_env)?;
        self.child = child;
        self.url = url;
        Ok(())
    }
}

impl Drop for LocalHub {
    fn drop(&mut self) {
        self.kill();
    }
}

fn spawn(dir: &Path, listen: &str, env: &[(String, String)]) -> anyhow::Result<(Child, String)> {
    let mut child = Command::new(smon_binary()?)
        .arg("serve")
        .current_dir(dir)
        .env("SMON_DATA_DIR", dir)
        .env("SMON_LISTEN", listen)
        .env("SMON_ADMIN_PASSWORD", ADMIN_PASSWORD)
        .env("SMON_LOCAL_AGENT", "false")
        .env("SMON_RATE_LIMITS_API_PER_MINUTE", "100000000")
        .env("SMON_RATE_LIMITS_WEBHOOK_CREATE_PER_MINUTE", "100000")
        .env("SMON_AUTH_LOGIN_IP_ATTEMPTS", "100000")
        .env("RUST_LOG", "warn")
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("cannot start smon")?;
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let mut url = None;
    for line in lines.by_ref() {
        let line = line?;
        if let Some(at) = line.find("listening on ") {
            url = Some(line[at + 13..].trim().to_string());
            break;
        }
    }
    std::thread::spawn(move || lines.for_each(drop));
    let url = url.context("the hub did not print its address")?;
    Ok((child, url))
}

/// An API client logged in as admin.
#[derive(Clone)]
pub struct Api {
    pub client: reqwest::Client,
    pub url: String,
    pub token: String,
}

impl Api {
    /// Log in to the hub at `url` (a bench-started hub's admin, or the given credentials).
    pub async fn login(url: &str, password: Option<&str>) -> anyhow::Result<Api> {
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(512)
            .timeout(Duration::from_secs(30))
            .build()?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let answer = client
                .post(format!("{url}/api/auth/login"))
                .json(
                    &json!({ "username": "admin", "password": password.unwrap_or(ADMIN_PASSWORD) }),
                )
                .send()
                .await;
            if let Ok(resp) = answer {
                let body: Value = resp.json().await?;
                let token = body["token"].as_str().context("login refused")?.to_string();
                return Ok(Api {
                    client,
                    url: url.to_string(),
                    token,
                });
            }
            if Instant::now() > deadline {
                bail!("the hub at {url} does not answer");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// POST JSON as admin; the answer's body, or an error naming the status.
    pub async fn post(&self, path: &str, body: Value) -> anyhow::Result<Value> {
        let resp = self
            .client
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await?;
        let status = resp.status();
        let body: Value = resp.json().await.unwrap_or(Value::Null);
        if !status.is_success() {
            bail!("POST {path}: {status} {body}");
        }
        Ok(body)
    }

    /// Create `n` servers (8 at a time) and return their agent tokens.
    pub async fn create_servers(&self, n: usize) -> anyhow::Result<Vec<String>> {
        let mut tokens = Vec::with_capacity(n);
        let mut next = 0;
        while next < n {
            let batch: Vec<_> = (next..(next + 8).min(n))
                .map(|i| {
                    let api = self.clone();
                    tokio::spawn(async move {
                        let tag = ["web", "db", "cache", "batch"][i % 4];
                        api.post(
                            "/api/servers",
                            json!({ "name": format!("bench-{i:05}"), "tags": [tag] }),
                        )
                        .await
                    })
                })
                .collect();
            for task in batch {
                let body = task.await??;
                tokens.push(
                    body["agent_token"]
                        .as_str()
                        .context("no agent token")?
                        .to_string(),
                );
            }
            next += 8;
        }
        Ok(tokens)
    }
}

/// Resident memory and CPU time of a process, from /proc.
pub fn resources(pid: u32) -> Option<(u64, f64)> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss_kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let hz = unsafe { libc_sysconf_clk_tck() } as f64;
    Some((rss_kb * 1024, ticks / hz))
}

unsafe extern "C" {
    fn sysconf(name: i32) -> i64;
}

/// `sysconf(_SC_CLK_TCK)`: 2 on Linux.
unsafe fn libc_sysconf_clk_tck() -> i64 {
    const SC_CLK_TCK: i32 = 2;
    // SAFETY: the caller's; sysconf has no preconditions.
    unsafe { sysconf(SC_CLK_TCK) }
}

/// Samples a process's memory and CPU while a scenario runs.
pub struct Monitor {
    pid: Option<u32>,
    started: Instant,
    cpu_start: f64,
    peak_rss: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: tokio::sync::watch::Sender<bool>,
}

impl Monitor {
    /// Watch `pid` (nothing when the hub is remote).
    pub fn start(pid: Option<u32>) -> Monitor {
        let peak_rss = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
        let (stop, mut stopped) = tokio::sync::watch::channel(false);
        let cpu_start = pid.and_then(resources).map_or(0.0, |(_, cpu)| cpu);
        if let Some(pid) = pid {
            let peak = peak_rss.clone();
            tokio::spawn(async move {
                loop {
                    if let Some((rss, _)) = resources(pid) {
                        peak.fetch_max(rss, std::sync::atomic::Ordering::Relaxed);
                    }
                    tokio::select! {
                        _ = stopped.changed() => break,
                        _ = tokio::time::sleep(Duration::from_millis(250)) => {}
                    }
                }
            });
        }
        Monitor {
            pid,
            started: Instant::now(),
            cpu_start,
            peak_rss,
            stop,
        }
    }

    /// The hub's peak resident memory (MB), its memory now, and its average CPU (percent of
    /// one core) since the start.
    pub fn finish(self) -> Value {
        let _ = self.stop.send(true);
        let Some(pid) = self.pid else {
            return Value::Null;
        };
        let Some((rss, cpu)) = resources(pid) else {
            return Value::Null;
        };
        let wall = self.started.elapsed().as_secs_f64();
        let peak = self
            .peak_rss
            .load(std::sync::atomic::Ordering::Relaxed)
            .max(rss);
        json!({
            "rss_mb_peak": round1(peak as f64 / 1_048_576.0),
            "rss_mb_end": round1(rss as f64 / 1_048_576.0),
            "cpu_percent_avg": round1((cpu - self.cpu_start) / wall * 100.0),
        })
    }
}

/// One decimal.
pub fn round1(v: f64) -> f64 {
    (v * 10.0).round() / 10.0
}
