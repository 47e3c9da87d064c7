//! One signed, SSRF-safe webhook delivery attempt and its verdict.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::header::{CONTENT_TYPE, HeaderMap, HeaderValue, RETRY_AFTER};
use reqwest::redirect::Policy;

use super::signing::{sm_signature, standard_signature};
use super::ssrf::{Refused, SsrfPolicy};

/// Response bodies are kept up to this many bytes.
pub const MAX_RESPONSE_BODY: usize = 1024;

/// What to do after an attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// 2xx.
    Delivered,
    /// 5xx, 408, 429, timeout or connection error: try again (after the receiver's
    /// `Retry-After` when it gave one).
    Retry { after: Option<Duration> },
    /// 3xx or another 4xx, or a refused destination: retrying would not help.
    Failed,
    /// 410: the receiver asks never to be called again.
    Gone,
}

/// The record of one attempt.
#[derive(Debug, Clone)]
pub struct Attempt {
    pub verdict: Verdict,
    pub status_code: Option<u16>,
    /// The start of the response body, at most [`MAX_RESPONSE_BODY`] bytes.
    pub response_body: Option<String>,
    pub error: Option<String>,
    pub duration_ms: u64,
}

/// What to send.
pub struct Delivery<'a> {
    pub url: &'a str,
    pub body: &'a [u8],
    pub event_id: &'a str,
    pub event_type: &'a str,
    /// Signing secrets, newest first; none means unsigned.
    pub secrets: &'a [&'a str],
    pub timeout: Duration,
    /// More headers (a notification channel's `Authorization`).
    pub headers: &'a [(&'static str, String)],
}

/// Exponential backoff with jitter: `base`, 2×`base`, 4×`base` … capped at `cap`, each scaled
/// by a random factor between ½ and 1 so that retries from many deliveries spread out.
pub fn backoff(base: Duration, cap: Duration, attempt: u32) -> Duration {
    let exp = base
        .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
        .min(cap);
    exp.mul_f64(rand::Rng::random_range(&mut rand::rng(), 0.5..=1.0))
}

/// The HTTP client for webhooks: no redirects, no proxies, DNS through the SSRF guard.
#[derive(Clone)]
pub struct WebhookClient {
    client: reqwest::Client,
    policy: Arc<SsrfPolicy>,
}

impl WebhookClient {
    /// A client enforcing `policy`.
    pub fn new(policy: Arc<SsrfPolicy>) -> Result<Self, String> {
        let client = reqwest::Client::builder()
            .redirect(Policy::none())
            .no_proxy()
            .dns_resolver(policy.resolver())
            .user_agent(format!("ServerMonitor-Webhook/{}", crate::VERSION))
            .connect_timeout(Duration::from_secs(10))
            .pool_idle_timeout(Duration::from_secs(30))
            .build()
            .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))?;
        Ok(Self { client, policy })
    }

    /// The guard this client enforces.
    pub fn policy(&self) -> &SsrfPolicy {
        &self.policy
    }

    /// Make one attempt. Signed afresh, with this attempt's timestamp.
    pub async fn attempt(&self, d: &Delivery<'_>) -> Attempt {
        let started = Instant::now();
        let failed = |error: String, verdict: Verdict| Attempt {
            verdict,
            status_code: None,
            response_body: None,
            error: Some(error),
            duration_ms: started.elapsed().as_millis() as u64,
        };
        // IP literals never reach the resolver, so the URL is checked here as well.
        let url = match self.policy.check_url(d.url) {
            Ok(url) => url,
            Err(e) => return failed(format!("destination refused: URL {e}"), Verdict::Failed),
        };
        let headers = match signed_headers(d) {
            Ok(h) => h,
            Err(e) => return failed(e, Verdict::Failed),
        };
        let sent = self
            .client
            .post(url)
            .headers(headers)
            .body(d.body.to_vec())
            .timeout(d.timeout)
            .send()
            .await;
        let mut response = match sent {
            Ok(r) => r,
            Err(e) => {
                // A webhook URL may carry a token in its path (Slack, ntfy): errors that reach
                // the delivery log, plugin counters and logs must not repeat it.
                let e = e.without_url();
                let what = if e.is_timeout() {
                    format!("timed out after {} s", d.timeout.as_secs())
                } else if e.is_connect() {
                    format!("connection failed: {}", error_chain(&e))
                } else {
                    format!("request failed: {}", error_chain(&e))
                };
                // A destination refused by the resolver will be refused again: no retry.
                let verdict = if refused_by_guard(&e) {
                    Verdict::Failed
                } else {
                    Verdict::Retry { after: None }
                };
                return failed(what, verdict);
            }
        };
        let status = response.status();
        let retry_after = response
            .headers()
            .get(RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok())
            .map(Duration::from_secs);
        let mut body = Vec::new();
        while body.len() < MAX_RESPONSE_BODY {
            match tokio::time::timeout(d.timeout, response.chunk()).await {
                Ok(Ok(Some(chunk))) => body.extend_from_slice(&chunk),
                _ => break,
            }
        }
        body.truncate(MAX_RESPONSE_BODY);
        let code = status.as_u16();
        let verdict = match code {
            200..=299 => Verdict::Delivered,
            410 => Verdict::Gone,
            408 | 429 => Verdict::Retry { after: retry_after },
            500..=599 => Verdict::Retry { after: retry_after },
            _ => Verdict::Failed,
        };
        let error = match &verdict {
            Verdict::Delivered => None,
            _ if status.is_redirection() => {
                Some(format!("HTTP {code}: redirects are not followed"))
            }
            _ => Some(format!("HTTP {code}")),
        };
        Attempt {
            verdict,
            status_code: Some(code),
            response_body: Some(truncate_utf8(String::from_utf8_lossy(&body).into_owned())),
            error,
            duration_ms: started.elapsed().as_millis() as u64,
        }
    }
}

/// At most [`MAX_RESPONSE_BODY`] bytes, cut on a character boundary.
fn truncate_utf8(mut text: String) -> String {
    let mut end = text.len().min(MAX_RESPONSE_BODY);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    text.truncate(end);
    text
}

fn refused_by_guard(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut current = Some(e);
    while let Some(err) = current {
        if err.is::<Refused>() {
            return true;
        }
        current = err.source();
    }
    false
}

/// An error with its sources, `: `-separated.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

fn signed_headers(d: &Delivery<'_>) -> Result<HeaderMap, String> {
    let value =
        |v: &str| HeaderValue::from_str(v).map_err(|_| format!("invalid header value {v:?}"));
    let timestamp = chrono::Utc::now().timestamp();
    let mut h = HeaderMap::new();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert("x-sm-event-id", value(d.event_id)?);
    h.insert("x-sm-event-type", value(d.event_type)?);
    h.insert("webhook-id", value(d.event_id)?);
    h.insert("webhook-timestamp", value(&timestamp.to_string())?);
    for (name, v) in d.headers {
        h.insert(
            *name,
            value(v).map_err(|_| format!("invalid {name} header value"))?,
        );
    }
    if let Some(newest) = d.secrets.first() {
        h.insert("x-sm-signature", value(&sm_signature(newest, d.body))?);
        let standard = standard_signature(d.secrets, d.event_id, timestamp, d.body);
        h.insert("webhook-signature", value(&standard)?);
    }
    Ok(h)
}
