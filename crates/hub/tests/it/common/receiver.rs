//! A real webhook receiver on loopback that records what it gets and answers as told.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;

/// One request the receiver got.
#[derive(Debug, Clone)]
pub struct Received {
    /// The request path, e.g. `/hook` or `/bot123:abc/sendMessage`.
    pub path: String,
    pub headers: HeaderMap,
    pub body: Bytes,
    pub at: Instant,
}

impl Received {
    /// A header's value (panics when missing).
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .unwrap_or_else(|| panic!("no {name} header"))
            .to_str()
            .unwrap()
            .to_string()
    }

    /// The body as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("JSON body")
    }
}

/// How to answer one request.
#[derive(Debug, Clone)]
pub struct Reply {
    pub status: u16,
    pub delay: Duration,
    pub headers: Vec<(&'static str, String)>,
}

impl Reply {
    /// Answer with `status` at once.
    pub fn status(status: u16) -> Reply {
        Reply {
            status,
            delay: Duration::ZERO,
            headers: Vec::new(),
        }
    }

    /// Wait `delay` before answering.
    pub fn after(mut self, delay: Duration) -> Reply {
        self.delay = delay;
        self
    }

    /// Add a response header.
    pub fn header(mut self, name: &'static str, value: &str) -> Reply {
        self.headers.push((name, value.to_string()));
        self
    }
}

#[derive(Clone)]
struct Shared {
    received: Arc<Mutex<Vec<Received>>>,
    /// Replies in order; then `fallback` for ever.
    script: Arc<Mutex<VecDeque<Reply>>>,
    fallback: Reply,
}

/// A receiver listening on `127.0.0.1`, stopped when dropped.
pub struct Receiver {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

async fn receive(
    State(s): State<Shared>,
    uri: axum::http::Uri,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    s.received.lock().unwrap().push(Received {
        path: uri.path().to_string(),
        headers,
        body,
        at: Instant::now(),
    });
    let reply = s
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| s.fallback.clone());
    tokio::time::sleep(reply.delay).await;
    let mut response = StatusCode::from_u16(reply.status).unwrap().into_response();
    for (name, value) in reply.headers {
        response.headers_mut().insert(name, value.parse().unwrap());
    }
    response
}

impl Receiver {
    /// Start a receiver that answers `statuses` in turn, then 200.
    pub async fn start(statuses: &[u16]) -> Receiver {
        Self::scripted(
            statuses.iter().map(|s| Reply::status(*s)).collect(),
            Reply::status(200),
        )
        .await
    }

    /// Start a receiver that answers with `script` in turn, then `fallback` for ever.
    pub async fn scripted(script: Vec<Reply>, fallback: Reply) -> Receiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        Self::serve(listener, script, fallback)
    }

    /// Like [`Receiver::start`] on a given address (to bring a receiver "back up").
    pub async fn start_on(addr: SocketAddr, statuses: &[u16]) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        Self::serve(
            listener,
            statuses.iter().map(|s| Reply::status(*s)).collect(),
            Reply::status(200),
        )
    }

    fn serve(listener: tokio::net::TcpListener, script: Vec<Reply>, fallback: Reply) -> Receiver {
        let shared = Shared {
            received: Arc::default(),
            script: Arc::new(Mutex::new(script.into())),
            fallback,
        };
        // Any path: chat services put tokens and topics in theirs, and tests check them.
        let app = Router::new()
            .route("/hook", post(receive))
            .fallback(receive)
            .with_state(shared.clone());
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Receiver { addr, shared, task }
    }

    /// The URL to configure.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// The receiver's root, `http://127.0.0.1:port`.
    pub fn base(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Everything received so far.
    pub fn received(&self) -> Vec<Received> {
        self.shared.received.lock().unwrap().clone()
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.task.abort();
    }
}
