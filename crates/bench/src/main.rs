//! `smon-bench`: load scenarios against a hub; each prints one JSON line.
//!
//! By default each scenario starts its own hub (`smon serve` from the same target directory)
//! on a temporary data directory and measures its memory and CPU too; `--hub URL` uses a
//! running hub instead (give its admin password with `--password`).

mod hub;
mod load;
mod receiver;
mod stats;

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde_json::{Value, json};

use hub::{Api, LocalHub, Monitor, round1};
use stats::Latencies;

#[derive(Parser)]
#[command(
    version,
    about = "Load scenarios for a Server Monitor hub; one JSON line each"
)]
struct Cli {
    /// Use this running hub instead of starting one.
    #[arg(long, global = true)]
    hub: Option<String>,
    /// The admin password of `--hub`.
    #[arg(long, global = true)]
    password: Option<String>,
    /// A setting for the hub the bench starts, as SMON_KEY=VALUE (repeatable).
    #[arg(long = "hub-env", global = true, value_parser = parse_env)]
    hub_env: Vec<(String, String)>,
    #[command(subcommand)]
    scenario: Scenario,
}

#[derive(Subcommand)]
enum Scenario {
    /// Simulated agents reporting every interval (or flat out with --max-rate).
    Ingest {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        interval: u64,
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Report as fast as the hub answers, with --concurrency workers.
        #[arg(long)]
        max_rate: bool,
        #[arg(long, default_value_t = 32)]
        concurrency: usize,
    },
    /// Readers on the cached GET endpoints while agents report.
    ApiRead {
        #[arg(long, default_value_t = 1000)]
        agents: usize,
        #[arg(long, default_value_t = 10)]
        interval: u64,
        #[arg(long, default_value_t = 32)]
        readers: usize,
        #[arg(long, default_value_t = 60)]
        duration: u64,
        /// Leave the web UI's fleet page out (the JSON endpoints only, to compare with runs
        /// from before the UI).
        #[arg(long)]
        api_only: bool,
    },
    /// E events to W webhooks on a local receiver: delivery rate, lag, losses.
    Webhooks {
        #[arg(long, default_value_t = 1000)]
        events: usize,
        #[arg(long, default_value_t = 4)]
        webhooks: usize,
    },
    /// Like webhooks, with the hub killed (-9) mid-backlog and restarted: nothing may be lost.
    Durability {
        #[arg(long, default_value_t = 1000)]
        events: usize,
        #[arg(long, default_value_t = 4)]
        webhooks: usize,
    },
}

/// The hub to load: one started here (with its pid), or the given one.
async fn hub_for(
    cli_hub: &Option<String>,
    password: &Option<String>,
    env: &[(String, String)],
) -> anyhow::Result<(Option<LocalHub>, Api)> {
    match cli_hub {
        Some(url) => Ok((None, Api::login(url, password.as_deref()).await?)),
        None => {
            let env: Vec<(&str, &str)> =
                env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let local = LocalHub::start(&env)?;
            let api = Api::login(&local.url, None).await?;
            Ok((Some(local), api))
        }
    }
}

fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn rate(n: u64, secs: f64) -> f64 {
    round1(n as f64 / secs.max(1e-9))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let line = match cli.scenario {
        Scenario::Ingest {
            agents,
            interval,
            duration,
            max_rate,
            concurrency,
        } => {
            let (local, api) = hub_for(&cli.hub, &cli.password, &cli.hub_env).await?;
            let setup = Instant::now();
            let tokens = Arc::new(api.create_servers(agents).await?);
            let setup_secs = setup.elapsed().as_secs_f64();
            let monitor = Monitor::start(local.as_ref().map(|h| h.pid()));
            let started = Instant::now();
            let lat = if max_rate {
                load::agents_flat_out(
                    api.client.clone(),
                    api.url.clone(),
                    tokens,
                    concurrency,
                    Duration::from_secs(duration),
                )
                .await
            } else {
                load::agents(
                    api.client.clone(),
                    api.url.clone(),
                    tokens,
                    Duration::from_secs(interval),
                    Duration::from_secs(duration),
                )
                .await
            };
            let secs = started.elapsed().as_secs_f64();
            let ok = lat.micros.len() as u64;
            let mut out = lat.summary();
            out["scenario"] = json!("ingest");
            out["agents"] = json!(agents);
            out["mode"] = json!(if max_rate { "max-rate" } else { "interval" });
            if max_rate {
                out["concurrency"] = json!(concurrency)
            } else {
                out["interval_secs"] = json!(interval)
            }
            out["duration_secs"] = json!(round1(secs));
            out["throughput_rps"] = json!(rate(ok, secs));
            out["setup_secs"] = json!(round1(setup_secs));
            out["hub"] = monitor.finish();
            out
        }
        Scenario::ApiRead {
            agents,
            interval,
            readers,
            duration,
            api_only,
        } => {
            let (local, api) = hub_for(&cli.hub, &cli.password, &cli.hub_env).await?;
            let tokens = Arc::new(api.create_servers(agents).await?);
            let monitor = Monitor::start(local.as_ref().map(|h| h.pid()));
            let ingest = tokio::spawn(load::agents(
                api.client.clone(),
                api.url.clone(),
                tokens,
                Duration::from_secs(interval),
                Duration::from_secs(duration),
            ));
            const ALL_PATHS: &[&str] = &[
                "/api/servers?limit=50",
                "/api/stats/overview",
                "/api/activity/recent?limit=20",
                // The web UI's fleet page: 50 rows, sorted by CPU, a page from the middle.
                "/?sort=-cpu&page=3",
            ];
            let paths: &'static [&'static str] = if api_only { &ALL_PATHS[..3] } else { ALL_PATHS };
            let started = Instant::now();
            let per_path = load::readers(
                api.client.clone(),
                api.url.clone(),
                api.token.clone(),
                paths,
                readers,
                Duration::from_secs(duration),
            )
            .await;
            let secs = started.elapsed().as_secs_f64();
            let ingest = ingest.await.context("ingest task")?;
            let mut endpoints = serde_json::Map::new();
            let mut total = 0;
            for (path, lat) in paths.iter().zip(per_path) {
                total += lat.micros.len() as u64;
                endpoints.insert(path.to_string(), lat.summary());
            }
            json!({
                "scenario": "api-read",
                "agents": agents,
                "interval_secs": interval,
                "readers": readers,
                "api_only": api_only,
                "duration_secs": round1(secs),
                "throughput_rps": rate(total, secs),
                "endpoints": endpoints,
                "ingest": ingest.summary(),
                "hub": monitor.finish(),
            })
        }
        Scenario::Webhooks { events, webhooks } => {
            webhook_run(
                &cli.hub,
                &cli.password,
                &cli.hub_env,
                events,
                webhooks,
                false,
            )
            .await?
        }
        Scenario::Durability { events, webhooks } => {
            if cli.hub.is_some() {
                bail!("durability kills the hub: it needs a hub the bench starts (no --hub)");
            }
            webhook_run(&None, &None, &cli.hub_env, events, webhooks, true).await?
        }
    };
    println!("{line}");
    Ok(())
}

/// E token.created events to W webhooks; with `crash`, the hub is killed -9 once a third of
/// the deliveries arrived, and restarted.
async fn webhook_run(
    cli_hub: &Option<String>,
    password: &Option<String>,
    hub_env: &[(String, String)],
    events: usize,
    webhooks: usize,
    crash: bool,
) -> anyhow::Result<Value> {
    let receiver = receiver::Receiver::start().await?;
    let mut env = vec![(
        "SMON_WEBHOOKS_ALLOW_CIDRS".to_string(),
        "127.0.0.1/32".to_string(),
    )];
    env.extend(hub_env.iter().cloned());
    let (mut local, api) = hub_for(cli_hub, password, &env).await?;
    for w in 0..webhooks {
        api.post(
            "/api/webhooks",
            json!({ "name": format!("bench-{w}"), "url": format!("http://{}/hook/{w}", receiver.addr),
                    "event_types": ["token.created"], "generate_secret": true }),
        )
        .await?;
    }
    let expected = events * webhooks;
    let monitor = Monitor::start(local.as_ref().map(|h| h.pid()));
    let started = Instant::now();
    // Emit the events 8 at a time: each personal token created is one token.created event.
    let mut next = 0;
    while next < events {
        let batch: Vec<_> = (next..(next + 8).min(events))
            .map(|i| {
                let api = api.clone();
                tokio::spawn(async move {
                    api.post("/api/users/me/tokens", json!({ "name": format!("t{i}") }))
                        .await
                })
            })
            .collect();
        for t in batch {
            t.await??;
        }
        next += 8;
    }
    let emitted_secs = started.elapsed().as_secs_f64();
    let mut crashed_at = None;
    let deadline = Instant::now() + Duration::from_secs(600);
    while receiver.distinct() < expected && Instant::now() < deadline {
        if crash && crashed_at.is_none() && receiver.distinct() >= expected / 3 {
            let hub = local.as_mut().expect("a local hub");
            hub.kill();
            crashed_at = Some(receiver.distinct());
            tokio::time::sleep(Duration::from_millis(500)).await;
            hub.restart()?;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let r = receiver.received.lock().unwrap_or_else(|p| p.into_inner());
    let secs = r
        .last_at
        .map_or(started.elapsed(), |t| t - started)
        .as_secs_f64();
    let delivered: u64 = r.count.values().map(|c| u64::from(*c)).sum();
    let distinct = r.count.len();
    let lag = Latencies {
        micros: r.lag_micros.clone(),
        errors: 0,
    }
    .summary();
    let mut out = json!({
        "scenario": if crash { "durability" } else { "webhooks" },
        "events": events,
        "webhooks": webhooks,
        "expected": expected,
        "delivered": delivered,
        "distinct": distinct,
        "lost": expected.saturating_sub(distinct),
        "duplicates": delivered - distinct as u64,
        "emit_secs": round1(emitted_secs),
        "duration_secs": round1(secs),
        "deliveries_per_sec": rate(distinct as u64, secs),
        "lag_ms": lag["latency_ms"],
        "hub": monitor.finish(),
    });
    if let Some(at) = crashed_at {
        out["killed_after_deliveries"] = json!(at);
    }
    Ok(out)
}
