//! Simulated agents and API readers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use rand::Rng;
use smon_proto::{
    DiskIo, FilesystemUsage, InterfaceRates, Memory, PROTOCOL_VERSION, REPORT_PATH, Rates, Report,
    Sample, Swap,
};
use tokio::sync::Mutex;

use crate::stats::Latencies;

/// A report like a small server's agent sends: 4 cores, 3 filesystems, 2 interfaces.
pub fn report(interval_secs: u32) -> Report {
    let mut rng = rand::rng();
    let cpu: f64 = rng.random_range(0.0..100.0);
    let fs = |mount: &str, used: u64| FilesystemUsage {
        mount: mount.into(),
        fs_type: "ext4".into(),
        total: 100_000_000_000,
        used,
    };
    Report {
        protocol: PROTOCOL_VERSION,
        agent_version: "bench".into(),
        interval_secs,
        default_interval_secs: Some(interval_secs),
        samples: vec![Sample {
            ts: Utc::now(),
            cpu_percent: cpu,
            cpu_per_core: vec![cpu; 4],
            load: [0.5, 0.4, 0.3],
            memory: Memory {
                total: 8 << 30,
                used: rng.random_range(1 << 30..7 << 30),
                available: 1 << 30,
            },
            swap: Swap { total: 0, used: 0 },
            filesystems: vec![
                fs("/", 40_000_000_000),
                fs("/var", 20_000_000_000),
                fs("/home", 5_000_000_000),
            ],
            disk_io: DiskIo {
                read_bps: 1000.0,
                write_bps: 2000.0,
            },
            network: vec![
                InterfaceRates {
                    name: "eth0".into(),
                    rx_bps: 5000.0,
                    tx_bps: 3000.0,
                },
                InterfaceRates {
                    name: "eth1".into(),
                    rx_bps: 100.0,
                    tx_bps: 50.0,
                },
            ],
            network_total: Rates {
                rx_bps: 5100.0,
                tx_bps: 3050.0,
            },
            uptime_secs: 100_000,
            process_count: 150,
            temperatures: vec![],
        }],
        inventory: None,
        tasks_enabled: false,
    }
}

async fn post_report(
    client: &reqwest::Client,
    url: &str,
    token: &str,
    interval: u32,
    into: &mut Latencies,
) {
    let body = report(interval);
    let started = Instant::now();
    let result = client.post(url).bearer_auth(token).json(&body).send().await;
    match result {
        Ok(r) if r.status().is_success() => {
            let _ = r.bytes().await;
            into.micros
                .push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
        }
        _ => into.errors += 1,
    }
}

/// Every agent reports once per `interval`, starting at a random point of the first interval,
/// until `duration` has passed.
pub async fn agents(
    client: reqwest::Client,
    hub: String,
    tokens: Arc<Vec<String>>,
    interval: Duration,
    duration: Duration,
) -> Latencies {
    let url = format!("{hub}{REPORT_PATH}");
    let all = Arc::new(Mutex::new(Latencies::default()));
    let deadline = tokio::time::Instant::now() + duration;
    let mut tasks = Vec::with_capacity(tokens.len());
    for i in 0..tokens.len() {
        let (client, url, tokens, all) = (client.clone(), url.clone(), tokens.clone(), all.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Latencies::default();
            let offset = interval.mul_f64(rand::rng().random_range(0.0..1.0));
            let mut next = tokio::time::Instant::now() + offset;
            while next < deadline {
                tokio::time::sleep_until(next).await;
                post_report(
                    &client,
                    &url,
                    &tokens[i],
                    interval.as_secs() as u32,
                    &mut mine,
                )
                .await;
                next += interval;
            }
            all.lock().await.merge(mine);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    Arc::try_unwrap(all)
        .map(|m| m.into_inner())
        .unwrap_or_default()
}

/// `concurrency` workers report as fast as the hub answers, cycling through the agents.
pub async fn agents_flat_out(
    client: reqwest::Client,
    hub: String,
    tokens: Arc<Vec<String>>,
    concurrency: usize,
    duration: Duration,
) -> Latencies {
    let url = format!("{hub}{REPORT_PATH}");
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for w in 0..concurrency {
        let (client, url, tokens) = (client.clone(), url.clone(), tokens.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine = Latencies::default();
            let mut i = w;
            while Instant::now() < deadline {
                post_report(&client, &url, &tokens[i % tokens.len()], 10, &mut mine).await;
                i += concurrency;
            }
            mine
        }));
    }
    let mut all = Latencies::default();
    for t in tasks {
        if let Ok(l) = t.await {
            all.merge(l);
        }
    }
    all
}

/// `readers` clients GET each path in turn until `duration` has passed; latencies per path.
pub async fn readers(
    client: reqwest::Client,
    hub: String,
    token: String,
    paths: &'static [&'static str],
    readers: usize,
    duration: Duration,
) -> Vec<Latencies> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for r in 0..readers {
        let (client, hub, token) = (client.clone(), hub.clone(), token.clone());
        tasks.push(tokio::spawn(async move {
            let mut mine: Vec<Latencies> = paths.iter().map(|_| Latencies::default()).collect();
            let mut i = r;
            while Instant::now() < deadline {
                let which = i % paths.len();
                let started = Instant::now();
                match client
                    .get(format!("{hub}{}", paths[which]))
                    .bearer_auth(&token)
                    // The web UI's pages read the session cookie (the API the bearer token).
                    .header("cookie", format!("smon_session={token}"))
                    .send()
                    .await
                {
                    Ok(resp) if resp.status().is_success() => {
                        let _ = resp.bytes().await;
                        mine[which]
                            .micros
                            .push(started.elapsed().as_micros() as u32);
                    }
                    _ => mine[which].errors += 1,
                }
                i += 1;
            }
            mine
        }));
    }
    let mut all: Vec<Latencies> = paths.iter().map(|_| Latencies::default()).collect();
    for t in tasks {
        if let Ok(mine) = t.await {
            for (a, m) in all.iter_mut().zip(mine) {
                a.merge(m);
            }
        }
    }
    all
}
