//! The push loop: sample every interval, keep samples while the hub is away, backfill them.

use std::collections::VecDeque;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use rand::Rng;
use smon_proto::{
    Inventory, MAX_LIST_ITEMS, MAX_REPORT_BYTES, MAX_SAMPLES_PER_REPORT, MAX_TEXT_BYTES,
    PROTOCOL_VERSION, REQUEST_INVENTORY, Report, ReportResponse, Sample, TaskUpdate,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::collect::Collector;
use crate::tasks::{TaskPolicy, Tasks};

/// Why a report was not accepted.
#[derive(Debug)]
pub enum PushError {
    /// The hub refused these samples for good (400, 413, 422): sending them again cannot help.
    Rejected(String),
    /// The hub refused the token; keep the samples and retry, someone may fix the token.
    Unauthorized(String),
    /// The hub is unreachable, overloaded or failing; keep the samples and retry.
    Unavailable(String),
}

impl std::fmt::Display for PushError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            PushError::Rejected(m) => write!(f, "report rejected: {m}"),
            PushError::Unauthorized(m) => write!(f, "agent token refused: {m}"),
            PushError::Unavailable(m) => write!(f, "hub unavailable: {m}"),
        }
    }
}

/// Where reports go: the hub over HTTP, or the hub itself for its embedded agent.
pub trait HubLink: Send + Sync + 'static {
    /// Deliver one report.
    fn report(
        &self,
        report: &Report,
    ) -> impl Future<Output = Result<ReportResponse, PushError>> + Send;

    /// Tell the hub a task started or ended.
    fn task_update(
        &self,
        task_id: &str,
        update: &TaskUpdate,
    ) -> impl Future<Output = Result<(), PushError>> + Send;
}

/// What the loop samples; the real [`Collector`] outside tests.
pub trait Source: Send + 'static {
    /// One sample, now.
    fn sample(&mut self) -> Sample;
    /// The inventory, now.
    fn inventory(&mut self) -> Inventory;
}

impl Source for Collector {
    fn sample(&mut self) -> Sample {
        Collector::sample(self)
    }
    fn inventory(&mut self) -> Inventory {
        Collector::inventory(self)
    }
}

/// Settings of the loop.
#[derive(Debug, Clone)]
pub struct PushSettings {
    pub interval: Duration,
    /// How much time the outage buffer covers (its size follows the interval).
    pub buffer: Duration,
    pub max_backoff: Duration,
    /// Delay the first sample by a random part of the interval, so agents started together
    /// do not report together.
    pub initial_jitter: bool,
    /// Which tasks this machine runs.
    pub tasks: TaskPolicy,
}

/// Samples waiting to be sent, oldest first, bounded: when full the oldest are dropped.
#[derive(Debug, Default)]
pub struct Backlog {
    samples: VecDeque<Sample>,
    capacity: usize,
    /// Samples dropped because the backlog was full.
    pub dropped: u64,
}

impl Backlog {
    /// An empty backlog holding at most `capacity` samples.
    pub fn new(capacity: usize) -> Self {
        Self {
            samples: VecDeque::new(),
            capacity: capacity.max(1),
            dropped: 0,
        }
    }

    /// Add a sample, dropping the oldest when full.
    pub fn push(&mut self, sample: Sample) {
        if self.samples.len() == self.capacity {
            self.samples.pop_front();
            self.dropped += 1;
        }
        self.samples.push_back(sample);
    }

    /// How many samples it holds at most.
    pub fn capacity(&self) -> usize {
        self.capacity
    }

    /// Change how many samples it holds, dropping the oldest if it now holds too many.
    pub fn set_capacity(&mut self, capacity: usize) {
        self.capacity = capacity.max(1);
        while self.samples.len() > self.capacity {
            self.samples.pop_front();
            self.dropped += 1;
        }
    }

    /// How many samples wait.
    pub fn len(&self) -> usize {
        self.samples.len()
    }

    /// Whether nothing waits.
    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// The oldest samples that fit in one report (by count and by encoded size).
    pub fn next_batch(&self) -> Vec<Sample> {
        // Leave room for the envelope and an inventory.
        let budget = MAX_REPORT_BYTES - 32 * 1024;
        let mut used = 0;
        let mut batch = Vec::new();
        for sample in self.samples.iter().take(MAX_SAMPLES_PER_REPORT) {
            let size = serde_json::to_vec(sample).map_or(usize::MAX, |v| v.len() + 1);
            if !batch.is_empty() && used + size > budget {
                break;
            }
            used += size;
            batch.push(sample.clone());
        }
        batch
    }

    /// Forget the oldest `n` samples (they were delivered or refused for good).
    pub fn consume(&mut self, n: usize) {
        self.samples.drain(..n.min(self.samples.len()));
    }
}

/// How long to wait after `failures` consecutive failures: doubling from the interval up to
/// `cap`, with ±20 % jitter so agents cut off together do not come back together.
pub fn backoff(interval: Duration, failures: u32, cap: Duration) -> Duration {
    let base = interval.saturating_mul(1u32 << failures.saturating_sub(1).min(16));
    base.mul_f64(rand::rng().random_range(0.8..1.2)).min(cap)
}

/// Inventory is compared with the last one sent every this many samples.
const INVENTORY_CHECK_EVERY: u64 = 30;

/// Run until `shutdown`: sample every interval, send, keep samples while the hub is away,
/// backfill them once it answers, and send the inventory at start, when it changes and when
/// the hub asks.
pub async fn run<L: HubLink, S: Source>(
    link: L,
    source: S,
    settings: PushSettings,
    shutdown: CancellationToken,
) {
    let link = Arc::new(link);
    let tasks = Tasks::new(link.clone(), settings.tasks.clone(), shutdown.clone());
    let mut source = Some(source);
    let mut interval = settings.interval;
    let capacity = |interval: Duration| {
        (settings.buffer.as_secs_f64() / interval.as_secs_f64().max(1.0)).ceil() as usize
    };
    let mut backlog = Backlog::new(capacity(interval));
    let mut pending_inventory: Option<Inventory> = None;
    let mut last_inventory: Option<Inventory> = None;
    let mut failures = 0u32;
    let mut retry_at = Instant::now();
    let mut ticks = 0u64;

    let mut next = Instant::now();
    if settings.initial_jitter {
        next += interval.mul_f64(rand::rng().random_range(0.0..1.0));
    }
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => break,
            _ = tokio::time::sleep_until(next) => {}
        }
        // Keep the cadence; a small jitter keeps agents from drifting into step.
        next += interval.mul_f64(rand::rng().random_range(0.98..1.02));
        if next < Instant::now() {
            next = Instant::now() + interval;
        }

        let check_inventory = last_inventory.is_none() || ticks % INVENTORY_CHECK_EVERY == 0;
        ticks += 1;
        let (returned, mut sample, inventory) = match collect(source.take(), check_inventory).await
        {
            Some(v) => v,
            None => {
                tracing::error!("the collector panicked; stopping");
                break;
            }
        };
        source = Some(returned);
        fit_sample(&mut sample);
        backlog.push(sample);
        if let Some(mut inv) = inventory {
            fit_inventory(&mut inv);
            if last_inventory.as_ref() != Some(&inv) {
                pending_inventory = Some(inv);
            }
        }

        if Instant::now() < retry_at {
            continue;
        }
        // Send until the backlog is empty or the hub fails; a backfill goes out batch by batch.
        loop {
            let samples = backlog.next_batch();
            if samples.is_empty() && pending_inventory.is_none() {
                break;
            }
            let report = Report {
                protocol: PROTOCOL_VERSION,
                agent_version: crate::VERSION.to_string(),
                interval_secs: interval.as_secs().max(1) as u32,
                default_interval_secs: Some(settings.interval.as_secs().max(1) as u32),
                samples,
                inventory: pending_inventory.clone(),
                tasks_enabled: tasks.enabled(),
            };
            let result = tokio::select! {
                _ = shutdown.cancelled() => return,
                r = link.report(&report) => r,
            };
            match result {
                Ok(answer) => {
                    if failures > 0 {
                        tracing::info!(waiting = backlog.len(), "hub reachable again; backfilling");
                    }
                    failures = 0;
                    backlog.consume(report.samples.len());
                    if report.inventory.is_some() {
                        last_inventory = pending_inventory.take();
                    }
                    tasks.cancel(&answer.cancel);
                    tasks.accept(answer.tasks);
                    let wanted =
                        Duration::from_secs(u64::from(answer.interval_secs.clamp(1, 3600)));
                    if wanted != interval {
                        tracing::info!(
                            interval_secs = answer.interval_secs,
                            "the hub set a new interval"
                        );
                        interval = wanted;
                        backlog.set_capacity(capacity(interval));
                    }
                    if answer.requests.iter().any(|r| r == REQUEST_INVENTORY) {
                        let (returned, inv) = match inventory_now(source.take()).await {
                            Some(v) => v,
                            None => {
                                tracing::error!("the collector panicked; stopping");
                                return;
                            }
                        };
                        source = Some(returned);
                        let mut inv = inv;
                        fit_inventory(&mut inv);
                        pending_inventory = Some(inv);
                    }
                }
                Err(PushError::Rejected(message)) if report.inventory.is_some() => {
                    // Perhaps the inventory is what the hub refuses: keep the samples and send
                    // them alone, and do not offer this inventory again until it changes.
                    tracing::error!(%message, "the hub rejected a report with the inventory; resending the samples without it");
                    last_inventory = pending_inventory.take();
                }
                Err(PushError::Rejected(message)) => {
                    tracing::error!(%message, samples = report.samples.len(), "the hub rejected a report; dropping it");
                    backlog.consume(report.samples.len());
                }
                Err(e) => {
                    failures += 1;
                    let wait = backoff(interval, failures, settings.max_backoff);
                    retry_at = Instant::now() + wait;
                    if matches!(e, PushError::Unauthorized(_)) {
                        tracing::error!(error = %e, retry_in = ?wait, waiting = backlog.len(), "cannot report");
                    } else {
                        tracing::warn!(error = %e, retry_in = ?wait, waiting = backlog.len(), "cannot report");
                    }
                    break;
                }
            }
        }
        if backlog.dropped > 0 && backlog.len() == backlog.capacity() {
            tracing::warn!(
                dropped = backlog.dropped,
                "outage buffer full; oldest samples dropped"
            );
        }
    }
}

/// A text the hub accepts: control characters replaced, cut at the protocol's bound.
fn fit_text(s: &mut String) {
    if s.chars().any(char::is_control) {
        *s = s
            .chars()
            .map(|c| if c.is_control() { '?' } else { c })
            .collect();
    }
    if s.len() > MAX_TEXT_BYTES {
        let mut end = MAX_TEXT_BYTES;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
    }
}

/// Bring a sample within the protocol's limits, so an odd machine (a mount point with a
/// newline, a container host with thousands of interfaces) still gets its samples stored.
pub fn fit_sample(s: &mut Sample) {
    s.cpu_per_core.truncate(MAX_LIST_ITEMS * 4);
    s.filesystems.truncate(MAX_LIST_ITEMS);
    s.network.truncate(MAX_LIST_ITEMS);
    s.temperatures.truncate(MAX_LIST_ITEMS);
    for f in &mut s.filesystems {
        fit_text(&mut f.mount);
        fit_text(&mut f.fs_type);
    }
    for n in &mut s.network {
        fit_text(&mut n.name);
    }
    for t in &mut s.temperatures {
        fit_text(&mut t.label);
    }
}

/// Bring an inventory within the protocol's limits.
pub fn fit_inventory(i: &mut Inventory) {
    for text in [
        &mut i.hostname,
        &mut i.os_name,
        &mut i.os_version,
        &mut i.kernel,
        &mut i.arch,
        &mut i.cpu_model,
        &mut i.agent_version,
    ] {
        fit_text(text);
    }
    i.filesystems.truncate(MAX_LIST_ITEMS);
    for f in &mut i.filesystems {
        fit_text(&mut f.mount);
        fit_text(&mut f.fs_type);
        fit_text(&mut f.device);
    }
    i.ip_addresses.truncate(MAX_LIST_ITEMS);
    for a in &mut i.ip_addresses {
        fit_text(a);
    }
}

/// Sample (and maybe inventory) off the async threads: reading /proc can take milliseconds.
async fn collect<S: Source>(
    source: Option<S>,
    with_inventory: bool,
) -> Option<(S, Sample, Option<Inventory>)> {
    let mut source = source?;
    tokio::task::spawn_blocking(move || {
        let sample = source.sample();
        let inventory = with_inventory.then(|| source.inventory());
        (source, sample, inventory)
    })
    .await
    .ok()
}

async fn inventory_now<S: Source>(source: Option<S>) -> Option<(S, Inventory)> {
    let mut source = source?;
    tokio::task::spawn_blocking(move || {
        let inventory = source.inventory();
        (source, inventory)
    })
    .await
    .ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(i: u64) -> Sample {
        Sample {
            ts: chrono::DateTime::from_timestamp(1_700_000_000 + i as i64, 0).unwrap(),
            cpu_percent: 1.0,
            cpu_per_core: vec![1.0; 4],
            load: [0.1, 0.2, 0.3],
            memory: smon_proto::Memory {
                total: 10,
                used: 5,
                available: 5,
            },
            swap: smon_proto::Swap { total: 0, used: 0 },
            filesystems: vec![],
            disk_io: Default::default(),
            network: vec![],
            network_total: Default::default(),
            uptime_secs: i,
            process_count: 1,
            temperatures: vec![],
        }
    }

    #[test]
    fn odd_machines_are_fitted_within_the_protocol_limits() {
        let mut s = sample(1);
        s.filesystems = (0..2000)
            .map(|i| smon_proto::FilesystemUsage {
                mount: format!("/mnt/with\nnewline{i}{}", "é".repeat(600)),
                fs_type: "ext4".into(),
                total: 10,
                used: 1,
            })
            .collect();
        fit_sample(&mut s);
        assert_eq!(s.filesystems.len(), MAX_LIST_ITEMS);
        let m = &s.filesystems[0].mount;
        assert!(
            m.len() <= MAX_TEXT_BYTES && !m.contains('\n') && m.starts_with("/mnt/with?newline0")
        );
    }

    #[test]
    fn a_full_backlog_drops_the_oldest_and_counts_them() {
        let mut b = Backlog::new(3);
        for i in 0..5 {
            b.push(sample(i));
        }
        assert_eq!(b.len(), 3);
        assert_eq!(b.dropped, 2);
        assert_eq!(b.next_batch()[0].uptime_secs, 2);
        b.consume(2);
        assert_eq!(b.next_batch().len(), 1);
        assert_eq!(b.next_batch()[0].uptime_secs, 4);
    }

    #[test]
    fn a_batch_stays_under_the_report_size_limit() {
        let mut b = Backlog::new(1000);
        for i in 0..1000 {
            let mut s = sample(i);
            // About 2 KiB each: a batch of 360 would be far over 256 KiB.
            s.cpu_per_core = vec![12.345_678_9; 120];
            b.push(s);
        }
        let batch = b.next_batch();
        let size = serde_json::to_vec(&batch).unwrap().len();
        assert!(!batch.is_empty() && batch.len() < MAX_SAMPLES_PER_REPORT);
        assert!(size < MAX_REPORT_BYTES - 16 * 1024, "{size} bytes");
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter() {
        let i = Duration::from_secs(10);
        let cap = Duration::from_secs(300);
        let first = backoff(i, 1, cap);
        assert!(first >= Duration::from_secs(8) && first <= Duration::from_secs(12));
        let third = backoff(i, 3, cap);
        assert!(third >= Duration::from_secs(32) && third <= Duration::from_secs(48));
        let late = backoff(i, 40, cap);
        assert!(
            late >= Duration::from_secs(240) && late <= cap,
            "never past the cap"
        );
    }
}
