//! Login brute-force protection: token buckets per client address and per username.

use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

use crate::config::AuthConfig;

/// Keyed limiters for login attempts.
pub struct LoginLimiter {
    per_ip: DefaultKeyedRateLimiter<String>,
    per_user: DefaultKeyedRateLimiter<String>,
    clock: DefaultClock,
}

fn quota(attempts: u32, window: Duration) -> Quota {
    let attempts = NonZeroU32::new(attempts.max(1)).expect("at least one");
    let period = (window / attempts.get()).max(Duration::from_millis(1));
    Quota::with_period(period)
        .expect("non-zero period")
        .allow_burst(attempts)
}

impl LoginLimiter {
    /// Limiters sized from the configuration.
    pub fn new(cfg: &AuthConfig) -> Self {
        let window = Duration::from_secs(cfg.login_window_secs);
        Self {
            per_ip: RateLimiter::keyed(quota(cfg.login_ip_attempts, window)),
            per_user: RateLimiter::keyed(quota(cfg.login_user_attempts, window)),
            clock: DefaultClock::default(),
        }
    }

    /// Take one attempt for this address and username, or say how long to wait.
    pub fn check(&self, ip: &str, username: &str) -> Result<(), Duration> {
        let now = self.clock.now();
        self.per_ip
            .check_key(&ip.to_string())
            .map_err(|not_until| not_until.wait_time_from(now))?;
        self.per_user
            .check_key(&crate::users::normalize_username(username))
            .map_err(|not_until| not_until.wait_time_from(now))
    }

    /// Forget keys whose buckets are full again, so the maps do not grow without bound.
    pub fn prune(&self) {
        self.per_ip.retain_recent();
        self.per_ip.shrink_to_fit();
        self.per_user.retain_recent();
        self.per_user.shrink_to_fit();
    }
}
