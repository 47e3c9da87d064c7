//! API rate limits: token buckets (governor) per client address for the whole API and per user
//! for costly actions, with `X-RateLimit-*` headers and `Retry-After` on 429.

use std::net::{IpAddr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, IntoResponseParts, Response, ResponseParts};
use governor::clock::{Clock, DefaultClock};
use governor::middleware::StateInformationMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use ipnet::IpNet;

use crate::app::AppState;
use crate::config::RateLimitsConfig;
use crate::error::Error;

type Keyed =
    RateLimiter<String, DefaultKeyedStateStore<String>, DefaultClock, StateInformationMiddleware>;

/// One named limit: `limit` requests per minute per key.
pub struct Limiter {
    pub name: &'static str,
    limit: u32,
    inner: Keyed,
    clock: DefaultClock,
    pub allowed: AtomicU64,
    pub rejected: AtomicU64,
}

/// What a client has left, sent as `X-RateLimit-*` headers.
#[derive(Debug, Clone, Copy)]
pub struct Allowance {
    pub limit: u32,
    pub remaining: u32,
    /// Seconds until the bucket is full again.
    pub reset_secs: u64,
}

const LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
const REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
const RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

impl Allowance {
    fn insert_into(self, headers: &mut HeaderMap, overwrite: bool) {
        for (name, value) in [
            (LIMIT, u64::from(self.limit)),
            (REMAINING, u64::from(self.remaining)),
            (RESET, self.reset_secs),
        ] {
            if overwrite || !headers.contains_key(&name) {
                headers.insert(name, HeaderValue::from(value));
            }
        }
    }
}

impl IntoResponseParts for Allowance {
    type Error = std::convert::Infallible;

    fn into_response_parts(self, mut res: ResponseParts) -> Result<ResponseParts, Self::Error> {
        self.insert_into(res.headers_mut(), true);
        Ok(res)
    }
}

impl Limiter {
    fn new(name: &'static str, per_minute: u32) -> Self {
        let limit = per_minute.max(1);
        let burst = NonZeroU32::new(limit).expect("at least one");
        let period = (Duration::from_secs(60) / limit).max(Duration::from_micros(1));
        let quota = Quota::with_period(period)
            .expect("non-zero")
            .allow_burst(burst);
        Limiter {
            name,
            limit,
            inner: RateLimiter::keyed(quota).with_middleware::<StateInformationMiddleware>(),
            clock: DefaultClock::default(),
            allowed: AtomicU64::new(0),
            rejected: AtomicU64::new(0),
        }
    }

    fn refill_secs(&self, missing: u32) -> u64 {
        (60 * u64::from(missing)).div_ceil(u64::from(self.limit))
    }

    /// Take one request for `key`, or a 429 saying when to come back.
    pub fn check(&self, key: &str) -> Result<Allowance, Error> {
        match self.inner.check_key(&key.to_string()) {
            Ok(snapshot) => {
                self.allowed.fetch_add(1, Ordering::Relaxed);
                let remaining = snapshot.remaining_burst_capacity();
                Ok(Allowance {
                    limit: self.limit,
                    remaining,
                    reset_secs: self.refill_secs(self.limit - remaining.min(self.limit)),
                })
            }
            Err(not_until) => {
                self.rejected.fetch_add(1, Ordering::Relaxed);
                Err(Error::RateLimited {
                    retry_after: not_until.wait_time_from(self.clock.now()),
                    limit: Some(self.limit),
                })
            }
        }
    }

    fn prune(&self) {
        self.inner.retain_recent();
        self.inner.shrink_to_fit();
    }
}

/// Every API limit.
pub struct RateLimits {
    /// Per client address, the whole API but health, readiness, metrics and login.
    pub api: Limiter,
    /// Per user: creating webhooks.
    pub webhook_create: Limiter,
    /// Per user: test deliveries.
    pub webhook_test: Limiter,
    /// Per server: inventory refresh requests.
    pub inventory_refresh: Limiter,
    /// Per user: task creation.
    pub task_create: Limiter,
    trusted_proxies: Vec<IpNet>,
}

impl RateLimits {
    /// Limits sized from the configuration (validated at load).
    pub fn new(cfg: &RateLimitsConfig) -> Self {
        RateLimits {
            api: Limiter::new("api", cfg.api_per_minute),
            webhook_create: Limiter::new("webhook_create", cfg.webhook_create_per_minute),
            webhook_test: Limiter::new("webhook_test", cfg.webhook_test_per_minute),
            inventory_refresh: Limiter::new("inventory_refresh", cfg.inventory_refresh_per_minute),
            task_create: Limiter::new("task_create", cfg.task_create_per_minute),
            trusted_proxies: cfg
                .trusted_proxies
                .iter()
                .filter_map(|c| {
                    c.parse::<IpNet>()
                        .ok()
                        .or_else(|| c.parse::<IpAddr>().ok().map(IpNet::from))
                })
                .collect(),
        }
    }

    /// Every limiter, for metrics.
    pub fn all(&self) -> [&Limiter; 5] {
        [
            &self.api,
            &self.webhook_create,
            &self.webhook_test,
            &self.inventory_refresh,
            &self.task_create,
        ]
    }

    /// Forget full buckets so that the key maps stay small.
    pub fn prune(&self) {
        for limiter in self.all() {
            limiter.prune();
        }
    }

    /// The client's address: the peer's, or, when the peer is a trusted proxy, the nearest
    /// untrusted address in `X-Forwarded-For`. An entry that is not an address ends the walk
    /// (what lies left of it cannot be trusted), and IPv4-mapped IPv6 counts as IPv4.
    pub fn client_ip(&self, peer: IpAddr, headers: &HeaderMap) -> IpAddr {
        let trusted = |ip: &IpAddr| self.trusted_proxies.iter().any(|net| net.contains(ip));
        let mut client = peer.to_canonical();
        if !trusted(&client) {
            return client;
        }
        let entries: Vec<&str> = headers
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .map(str::trim)
            .collect();
        for entry in entries.iter().rev() {
            let parsed = entry
                .parse::<IpAddr>()
                .or_else(|_| entry.parse::<SocketAddr>().map(|s| s.ip()));
            let Ok(ip) = parsed else { break };
            client = ip.to_canonical();
            if !trusted(&client) {
                break;
            }
        }
        client
    }
}

/// Routes outside the per-client limit: probes and scrapers must always get through, logins
/// have their own, stricter limits, and agent reports (many agents may share one address
/// behind NAT) are authenticated per server and shed by the ingest queue instead.
fn exempt(path: &str) -> bool {
    matches!(
        path,
        "/api/health" | "/api/ready" | "/api/metrics" | "/api/auth/login" | smon_proto::REPORT_PATH
    ) || !path.starts_with("/api/")
}

/// The per-client limit for the whole API.
pub async fn limit_api(State(state): State<AppState>, req: Request, next: Next) -> Response {
    if exempt(req.uri().path()) {
        return next.run(req).await;
    }
    let Some(ConnectInfo(peer)) = req.extensions().get::<ConnectInfo<SocketAddr>>().copied() else {
        return next.run(req).await;
    };
    let client = state.limits.client_ip(peer.ip(), req.headers());
    match state.limits.api.check(&client.to_string()) {
        Ok(allowance) => {
            let mut response = next.run(req).await;
            // A route with its own, tighter limit has already said what is left of that one.
            allowance.insert_into(response.headers_mut(), false);
            response
        }
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(trusted: &[&str]) -> RateLimits {
        RateLimits::new(&RateLimitsConfig {
            trusted_proxies: trusted.iter().map(|s| s.to_string()).collect(),
            ..RateLimitsConfig::default()
        })
    }

    fn xff(value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", value.parse().unwrap());
        h
    }

    #[test]
    fn the_client_address_comes_from_trusted_proxies_only() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let open = limits(&[]);
        assert_eq!(
            open.client_ip(proxy, &xff("203.0.113.7")),
            proxy,
            "untrusted peer: header ignored"
        );
        let lb = limits(&["10.0.0.0/8"]);
        assert_eq!(
            lb.client_ip(proxy, &xff("198.51.100.1, 203.0.113.7"))
                .to_string(),
            "203.0.113.7"
        );
        // Hops through several trusted proxies are skipped.
        assert_eq!(
            lb.client_ip(proxy, &xff("203.0.113.7, 10.0.0.9"))
                .to_string(),
            "203.0.113.7"
        );
        // ip:port entries are read; anything else ends the walk at the last trusted hop.
        assert_eq!(
            lb.client_ip(proxy, &xff("203.0.113.7:4711")).to_string(),
            "203.0.113.7"
        );
        assert_eq!(
            lb.client_ip(proxy, &xff("198.51.100.66, unknown"))
                .to_string(),
            "10.0.0.1"
        );
        // An IPv4 client seen on a dual-stack socket is matched as IPv4.
        let mapped: IpAddr = "::ffff:10.0.0.1".parse().unwrap();
        assert_eq!(
            lb.client_ip(mapped, &xff("203.0.113.7")).to_string(),
            "203.0.113.7"
        );
    }
}
