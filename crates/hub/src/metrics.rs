//! Prometheus metrics: HTTP requests by route template, and the counters the services keep,
//! rendered in the text exposition format for `GET /api/metrics`.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::Mutex;
use std::sync::atomic::Ordering;
use std::time::Duration;

use crate::webhooks::service::DeliveryMetrics;

/// Upper bounds of the request latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 10] = [0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0];

#[derive(Default)]
struct RouteStats {
    by_status: BTreeMap<u16, u64>,
    buckets: [u64; LATENCY_BUCKETS.len()],
    count: u64,
    sum_secs: f64,
}

/// Requests and their latency per (method, route template). Route templates, not raw paths,
/// so that ids do not explode the number of series.
#[derive(Default)]
pub struct HttpMetrics {
    routes: Mutex<BTreeMap<(String, String), RouteStats>>,
}

impl HttpMetrics {
    /// Count one answered request.
    pub fn record(&self, method: &str, route: &str, status: u16, elapsed: Duration) {
        let secs = elapsed.as_secs_f64();
        let mut routes = self.routes.lock().unwrap();
        let stats = routes
            .entry((method.to_string(), route.to_string()))
            .or_default();
        *stats.by_status.entry(status).or_default() += 1;
        for (bucket, bound) in stats.buckets.iter_mut().zip(LATENCY_BUCKETS) {
            if secs <= bound {
                *bucket += 1;
            }
        }
        stats.count += 1;
        stats.sum_secs += secs;
    }

    /// Append the HTTP series.
    pub fn render(&self, out: &mut Exposition) {
        let routes = self.routes.lock().unwrap();
        out.help(
            "smon_http_requests_total",
            "counter",
            "HTTP requests answered, by route template and status.",
        );
        for ((method, route), stats) in routes.iter() {
            for (status, n) in &stats.by_status {
                let labels = [
                    ("method", method.as_str()),
                    ("route", route.as_str()),
                    ("status", &status.to_string()),
                ];
                out.sample("smon_http_requests_total", &labels, *n as f64);
            }
        }
        out.help(
            "smon_http_request_duration_seconds",
            "histogram",
            "HTTP request latency by route template.",
        );
        for ((method, route), stats) in routes.iter() {
            let base = [("method", method.as_str()), ("route", route.as_str())];
            out.histogram(
                "smon_http_request_duration_seconds",
                &base,
                &LATENCY_BUCKETS,
                &stats.buckets,
                stats.count,
                stats.sum_secs,
            );
        }
    }
}

/// A text exposition being written.
#[derive(Default)]
pub struct Exposition {
    text: String,
}

fn escape(value: &str) -> String {
    value
        .replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Exposition {
    /// `# HELP` and `# TYPE` lines of a metric.
    pub fn help(&mut self, name: &str, kind: &str, help: &str) {
        let _ = writeln!(self.text, "# HELP {name} {help}\n# TYPE {name} {kind}");
    }

    /// One sample.
    pub fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: f64) {
        self.text.push_str(name);
        if !labels.is_empty() {
            let inner: Vec<String> = labels
                .iter()
                .map(|(k, v)| format!("{k}=\"{}\"", escape(v)))
                .collect();
            let _ = write!(self.text, "{{{}}}", inner.join(","));
        }
        let _ = writeln!(self.text, " {value}");
    }

    /// A whole histogram from cumulative counts per bound, the total count and the sum.
    pub fn histogram(
        &mut self,
        name: &str,
        labels: &[(&str, &str)],
        bounds: &[f64],
        cumulative: &[u64],
        count: u64,
        sum: f64,
    ) {
        for (bound, n) in bounds.iter().zip(cumulative) {
            let le = bound.to_string();
            let mut with_le = labels.to_vec();
            with_le.push(("le", &le));
            self.sample(&format!("{name}_bucket"), &with_le, *n as f64);
        }
        let mut inf = labels.to_vec();
        inf.push(("le", "+Inf"));
        self.sample(&format!("{name}_bucket"), &inf, count as f64);
        self.sample(&format!("{name}_sum"), labels, sum);
        self.sample(&format!("{name}_count"), labels, count as f64);
    }

    /// The finished text.
    pub fn finish(self) -> String {
        self.text
    }
}

/// The process's resident memory, in bytes (Linux), if it can be read.
pub fn resident_memory_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let page_size = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page_size).ok()?)
}

/// Hits, misses, hit ratio and entries of each response cache.
fn render_caches(state: &crate::app::AppState, out: &mut Exposition) {
    let caches = state.caches.all();
    out.help(
        "smon_cache_requests_total",
        "counter",
        "Cached endpoint reads by cache and outcome.",
    );
    for c in caches {
        for (outcome, counter) in [("hit", &c.hits), ("miss", &c.misses)] {
            out.sample(
                "smon_cache_requests_total",
                &[("cache", c.name), ("outcome", outcome)],
                counter.load(Ordering::Relaxed) as f64,
            );
        }
    }
    out.help(
        "smon_cache_hit_ratio",
        "gauge",
        "Hits over all reads of each cache since start (0 before any read).",
    );
    for c in caches {
        let (hits, misses) = (
            c.hits.load(Ordering::Relaxed) as f64,
            c.misses.load(Ordering::Relaxed) as f64,
        );
        let ratio = if hits + misses > 0.0 {
            hits / (hits + misses)
        } else {
            0.0
        };
        out.sample("smon_cache_hit_ratio", &[("cache", c.name)], ratio);
    }
    out.help("smon_cache_entries", "gauge", "Answers each cache holds.");
    for c in caches {
        out.sample(
            "smon_cache_entries",
            &[("cache", c.name)],
            c.entries() as f64,
        );
    }
}

/// Servers by status and the ingest pipeline's counters.
fn render_fleet(state: &crate::app::AppState, out: &mut Exposition) {
    let (online, offline, unknown) = state.fleet.counts();
    out.help("smon_servers", "gauge", "Servers by status.");
    for (status, n) in [
        ("online", online),
        ("offline", offline),
        ("unknown", unknown),
    ] {
        out.sample("smon_servers", &[("status", status)], n as f64);
    }
    let m = state.fleet.metrics();
    out.help(
        "smon_agent_reports_total",
        "counter",
        "Agent reports by outcome: stored, rejected as invalid, or shed because the ingest queue was full.",
    );
    for (outcome, counter) in [
        ("accepted", &m.reports_accepted),
        ("rejected", &m.reports_rejected),
        ("shed", &m.reports_shed),
    ] {
        out.sample(
            "smon_agent_reports_total",
            &[("outcome", outcome)],
            counter.load(Ordering::Relaxed) as f64,
        );
    }
    for (name, help, counter) in [
        (
            "smon_ingest_samples_total",
            "Samples committed to the metrics history.",
            &m.samples_stored,
        ),
        (
            "smon_ingest_batches_total",
            "Transactions the ingest writer committed (or tried to).",
            &m.batches,
        ),
        (
            "smon_ingest_batch_items_total",
            "Reports and status changes written by those transactions; divided by batches, the mean batch size.",
            &m.batch_items,
        ),
        (
            "smon_alert_observations_dropped_total",
            "Reports alert evaluation skipped because it was behind (status changes are never skipped).",
            &m.observations_dropped,
        ),
        (
            "smon_ingest_write_errors_total",
            "Ingest transactions that failed (their reports were answered 503 and are retried by the agents).",
            &m.write_errors,
        ),
    ] {
        out.help(name, "counter", help);
        out.sample(name, &[], counter.load(Ordering::Relaxed) as f64);
    }
    out.help(
        "smon_ingest_queue_depth",
        "gauge",
        "Reports waiting for the ingest writer.",
    );
    out.sample(
        "smon_ingest_queue_depth",
        &[],
        state.fleet.queue_depth() as f64,
    );
}

/// Everything `GET /api/metrics` shows.
pub async fn render(state: &crate::app::AppState) -> crate::error::Result<String> {
    let mut out = Exposition::default();
    out.help("smon_build_info", "gauge", "The running version.");
    out.sample("smon_build_info", &[("version", crate::VERSION)], 1.0);
    state.http_metrics.render(&mut out);

    let depths = state.system.queue_depths().await?;
    out.help(
        "smon_event_outbox_depth",
        "gauge",
        "Events written but not yet dispatched.",
    );
    out.sample(
        "smon_event_outbox_depth",
        &[],
        depths.undispatched_events as f64,
    );
    out.help(
        "smon_webhook_queue_depth",
        "gauge",
        "Webhook deliveries queued (waiting or being retried).",
    );
    out.sample("smon_webhook_queue_depth", &[], depths.webhook_jobs as f64);

    let m = state.webhooks.metrics();
    out.help(
        "smon_webhook_deliveries_total",
        "counter",
        "Webhook delivery attempts by outcome.",
    );
    for (status, counter) in [
        ("success", &m.success),
        ("failed", &m.failed),
        ("retrying", &m.retrying),
    ] {
        out.sample(
            "smon_webhook_deliveries_total",
            &[("status", status)],
            counter.load(Ordering::Relaxed) as f64,
        );
    }
    let per_bucket: Vec<u64> = m
        .latency_buckets
        .iter()
        .map(|b| b.load(Ordering::Relaxed))
        .collect();
    let count: u64 = per_bucket.iter().sum();
    let cumulative: Vec<u64> = per_bucket
        .iter()
        .scan(0, |acc, n| {
            *acc += n;
            Some(*acc)
        })
        .take(DeliveryMetrics::BUCKETS_MS.len())
        .collect();
    let bounds: Vec<f64> = DeliveryMetrics::BUCKETS_MS
        .iter()
        .map(|ms| *ms as f64 / 1000.0)
        .collect();
    out.help(
        "smon_webhook_delivery_duration_seconds",
        "histogram",
        "Webhook delivery attempt latency.",
    );
    out.histogram(
        "smon_webhook_delivery_duration_seconds",
        &[],
        &bounds,
        &cumulative,
        count,
        m.latency_ms_total.load(Ordering::Relaxed) as f64 / 1000.0,
    );

    let plugins = state.plugins.statuses();
    out.help(
        "smon_plugin_events_total",
        "counter",
        "Events per plugin by outcome.",
    );
    for p in plugins.iter().filter(|p| p.enabled) {
        for (outcome, n) in [
            ("handled", p.handled),
            ("failed", p.failed),
            ("dropped", p.dropped),
        ] {
            out.sample(
                "smon_plugin_events_total",
                &[("plugin", &p.name), ("outcome", outcome)],
                n as f64,
            );
        }
    }
    out.help(
        "smon_plugin_queue_depth",
        "gauge",
        "Events waiting in each plugin's queue.",
    );
    for p in plugins.iter().filter(|p| p.enabled) {
        out.sample(
            "smon_plugin_queue_depth",
            &[("plugin", &p.name)],
            p.queued as f64,
        );
    }
    out.help(
        "smon_rate_limit_requests_total",
        "counter",
        "Requests checked by each rate limiter, by outcome.",
    );
    for limiter in state.limits.all() {
        for (outcome, counter) in [
            ("allowed", &limiter.allowed),
            ("rejected", &limiter.rejected),
        ] {
            out.sample(
                "smon_rate_limit_requests_total",
                &[("limiter", limiter.name), ("outcome", outcome)],
                counter.load(Ordering::Relaxed) as f64,
            );
        }
    }
    render_fleet(state, &mut out);
    render_caches(state, &mut out);
    if let Some(rss) = resident_memory_bytes() {
        out.help(
            "smon_process_resident_memory_bytes",
            "gauge",
            "Resident memory of the hub process.",
        );
        out.sample("smon_process_resident_memory_bytes", &[], rss as f64);
    }
    Ok(out.finish())
}
