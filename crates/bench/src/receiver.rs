//! A webhook receiver on loopback that counts what arrives and how late.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::routing::post;
use chrono::{DateTime, Utc};

/// Deliveries by (webhook, event id), with their enqueue-to-delivered lag.
#[derive(Default)]
pub struct Received {
    pub count: HashMap<(u32, String), u32>,
    pub lag_micros: Vec<u32>,
    pub last_at: Option<std::time::Instant>,
}

/// The receiver's address and what it got.
pub struct Receiver {
    pub addr: SocketAddr,
    pub received: Arc<Mutex<Received>>,
}

async fn hook(
    State(received): State<Arc<Mutex<Received>>>,
    Path(webhook): Path<u32>,
    body: Bytes,
) -> &'static str {
    let now = Utc::now();
    let event: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
    let id = event["event_id"].as_str().unwrap_or_default().to_string();
    let lag = event["timestamp"]
        .as_str()
        .and_then(|t| t.parse::<DateTime<Utc>>().ok())
        .map(|t| (now - t).num_microseconds().unwrap_or(0).max(0) as u32);
    let mut r = received.lock().unwrap_or_else(|p| p.into_inner());
    *r.count.entry((webhook, id)).or_insert(0) += 1;
    if let Some(lag) = lag {
        r.lag_micros.push(lag);
    }
    r.last_at = Some(std::time::Instant::now());
    "ok"
}

impl Receiver {
    /// Listen on a free loopback port.
    pub async fn start() -> anyhow::Result<Receiver> {
        let received = Arc::new(Mutex::new(Received::default()));
        let app = Router::new()
            .route("/hook/{webhook}", post(hook))
            .with_state(received.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(Receiver { addr, received })
    }

    /// Distinct deliveries so far.
    pub fn distinct(&self) -> usize {
        self.received
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .count
            .len()
    }
}
