//! Latency summaries.

use serde_json::{Value, json};

use crate::hub::round1;

/// Request latencies in microseconds, and errors.
#[derive(Default)]
pub struct Latencies {
    pub micros: Vec<u32>,
    pub errors: u64,
}

impl Latencies {
    /// Add another set.
    pub fn merge(&mut self, other: Latencies) {
        self.micros.extend(other.micros);
        self.errors += other.errors;
    }

    /// Count, errors and p50/p95/p99/max in milliseconds.
    pub fn summary(mut self) -> Value {
        self.micros.sort_unstable();
        let at = |q: f64| -> f64 {
            if self.micros.is_empty() {
                return 0.0;
            }
            let i =
                ((self.micros.len() as f64 * q).ceil() as usize).clamp(1, self.micros.len()) - 1;
            round1(self.micros[i] as f64 / 1000.0)
        };
        json!({
            "requests": self.micros.len() as u64 + self.errors,
            "errors": self.errors,
            "latency_ms": { "p50": at(0.50), "p95": at(0.95), "p99": at(0.99), "max": at(1.0) },
        })
    }
}
