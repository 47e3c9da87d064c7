//! Alert rules: what they may say, and how a value is judged against them.

use chrono::Duration;
use smon_proto::Sample;

use crate::error::{Error, Result};
use crate::store::RuleRecord;

/// What a rule watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AlertMetric {
    Cpu,
    Memory,
    Swap,
    /// One mount point, or the fullest filesystem.
    Disk,
    /// The 1-minute load average divided by the number of cores.
    Load,
    NetRx,
    NetTx,
    /// The hottest sensor.
    Temperature,
    /// The server stopped reporting.
    Offline,
}

impl AlertMetric {
    const NAMES: [(&'static str, AlertMetric); 9] = [
        ("cpu", AlertMetric::Cpu),
        ("memory", AlertMetric::Memory),
        ("swap", AlertMetric::Swap),
        ("disk", AlertMetric::Disk),
        ("load", AlertMetric::Load),
        ("net_rx", AlertMetric::NetRx),
        ("net_tx", AlertMetric::NetTx),
        ("temperature", AlertMetric::Temperature),
        ("offline", AlertMetric::Offline),
    ];

    /// Parse an API name.
    pub fn parse(s: &str) -> Option<Self> {
        Self::NAMES.iter().find(|(n, _)| *n == s).map(|(_, m)| *m)
    }

    fn is_percent(self) -> bool {
        matches!(
            self,
            AlertMetric::Cpu | AlertMetric::Memory | AlertMetric::Swap | AlertMetric::Disk
        )
    }

    /// The value in a sample, when the sample has it.
    pub fn value(self, s: &Sample, mount: Option<&str>) -> Option<f64> {
        let percent =
            |used: u64, total: u64| (total > 0).then(|| used as f64 * 100.0 / total as f64);
        match self {
            AlertMetric::Cpu => Some(s.cpu_percent),
            AlertMetric::Memory => percent(s.memory.used, s.memory.total),
            AlertMetric::Swap => percent(s.swap.used, s.swap.total),
            AlertMetric::Disk => match mount {
                Some(m) => s
                    .filesystems
                    .iter()
                    .find(|f| f.mount == m)
                    .and_then(|f| percent(f.used, f.total)),
                None => s
                    .filesystems
                    .iter()
                    .filter_map(|f| percent(f.used, f.total))
                    .reduce(f64::max),
            },
            AlertMetric::Load => {
                let cores = s.cpu_per_core.len().max(1) as f64;
                Some(s.load[0] / cores)
            }
            AlertMetric::NetRx => Some(s.network_total.rx_bps),
            AlertMetric::NetTx => Some(s.network_total.tx_bps),
            AlertMetric::Temperature => s.temperatures.iter().map(|t| t.celsius).reduce(f64::max),
            AlertMetric::Offline => None,
        }
    }
}

/// How a value is compared with the threshold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Comparison {
    Above,
    AtLeast,
    Below,
    AtMost,
}

impl Comparison {
    /// Parse `>`, `>=`, `<` or `<=`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            ">" => Some(Comparison::Above),
            ">=" => Some(Comparison::AtLeast),
            "<" => Some(Comparison::Below),
            "<=" => Some(Comparison::AtMost),
            _ => None,
        }
    }

    /// Whether `value` is on the alerting side of `limit`.
    pub fn holds(self, value: f64, limit: f64) -> bool {
        match self {
            Comparison::Above => value > limit,
            Comparison::AtLeast => value >= limit,
            Comparison::Below => value < limit,
            Comparison::AtMost => value <= limit,
        }
    }

    fn upward(self) -> bool {
        matches!(self, Comparison::Above | Comparison::AtLeast)
    }
}

/// Which servers a rule covers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    All,
    Tag(String),
    Server(String),
}

/// A rule, checked and ready to judge values.
#[derive(Debug, Clone)]
pub struct Rule {
    pub record: RuleRecord,
    pub metric: AlertMetric,
    pub comparison: Comparison,
    pub scope: Scope,
    pub for_duration: Duration,
}

impl Rule {
    /// Check a rule record as a whole, naming the field at fault.
    pub fn compile(r: RuleRecord) -> Result<Rule> {
        // Rule names follow the rules of server names.
        crate::fleet::validate::server_name(&r.name)?;
        let metric = AlertMetric::parse(&r.metric).ok_or_else(|| {
            Error::invalid(
                "metric",
                "must be cpu, memory, swap, disk, load, net_rx, net_tx, temperature or offline",
            )
        })?;
        if r.mount.is_some() && metric != AlertMetric::Disk {
            return Err(Error::invalid(
                "mount",
                "only disk rules name a mount point",
            ));
        }
        if let Some(m) = &r.mount {
            if !m.starts_with('/') || m.len() > 1024 {
                return Err(Error::invalid(
                    "mount",
                    "must be an absolute path such as /var",
                ));
            }
        }
        let comparison = Comparison::parse(&r.comparison)
            .ok_or_else(|| Error::invalid("comparison", "must be >, >=, < or <="))?;
        let finite = |field: &str, v: f64| {
            if v.is_finite() {
                Ok(())
            } else {
                Err(Error::invalid(field, "must be a finite number"))
            }
        };
        finite("threshold", r.threshold)?;
        if metric.is_percent() && !(0.0..=100.0).contains(&r.threshold) {
            return Err(Error::invalid(
                "threshold",
                "is a percentage: between 0 and 100",
            ));
        }
        if let Some(recovery) = r.recovery_threshold {
            finite("recovery_threshold", recovery)?;
            let safe_side = if comparison.upward() {
                recovery <= r.threshold
            } else {
                recovery >= r.threshold
            };
            if !safe_side {
                return Err(Error::invalid(
                    "recovery_threshold",
                    "must be on the healthy side of the threshold (not above it for > and >=, not below it for < and <=)",
                ));
            }
        }
        if r.for_secs > 86_400 {
            return Err(Error::invalid("for", "at most 24 hours"));
        }
        let scope = match (r.scope.as_str(), &r.scope_value) {
            ("all", None) => Scope::All,
            ("tag", Some(t)) if !t.is_empty() => Scope::Tag(t.to_lowercase()),
            ("server", Some(s)) if !s.is_empty() => Scope::Server(s.clone()),
            ("all" | "tag" | "server", _) => {
                return Err(Error::invalid(
                    "scope",
                    "a tag scope needs tag, a server scope needs server_id, all needs neither",
                ));
            }
            _ => return Err(Error::invalid("scope", "must be all, tag or server")),
        };
        Ok(Rule {
            for_duration: Duration::seconds(i64::from(r.for_secs)),
            record: r,
            metric,
            comparison,
            scope,
        })
    }

    /// Whether the rule watches this server.
    pub fn covers(&self, server_id: &str, tags: &[String]) -> bool {
        self.record.enabled
            && match &self.scope {
                Scope::All => true,
                Scope::Tag(t) => tags.contains(t),
                Scope::Server(s) => s == server_id,
            }
    }

    /// Whether a value breaches the threshold.
    pub fn breached(&self, value: f64) -> bool {
        self.comparison.holds(value, self.record.threshold)
    }

    /// Whether a firing alert's value is back on the healthy side of the recovery threshold.
    pub fn recovered(&self, value: f64) -> bool {
        let limit = self
            .record
            .recovery_threshold
            .unwrap_or(self.record.threshold);
        !self.comparison.holds(value, limit)
    }
}

/// Parse a duration: seconds as a number, or a string like `90s`, `5m`, `1h`, `1h30m`.
pub fn parse_duration(v: &serde_json::Value) -> Result<u32> {
    let bad = || Error::invalid("for", "must be seconds or a duration like 30s, 5m, 1h30m");
    if let Some(n) = v.as_u64() {
        return u32::try_from(n).map_err(|_| bad());
    }
    let text = v.as_str().ok_or_else(bad)?.trim();
    if text.is_empty() {
        return Err(bad());
    }
    let (mut total, mut digits) = (0u64, String::new());
    for c in text.chars() {
        if c.is_ascii_digit() {
            digits.push(c);
            continue;
        }
        let unit = match c {
            's' => 1,
            'm' => 60,
            'h' => 3600,
            'd' => 86_400,
            _ => return Err(bad()),
        };
        let n: u64 = digits.parse().map_err(|_| bad())?;
        total = total.saturating_add(n.saturating_mul(unit));
        digits.clear();
    }
    if !digits.is_empty() {
        total = total.saturating_add(digits.parse::<u64>().map_err(|_| bad())?);
    }
    u32::try_from(total).map_err(|_| bad())
}

/// A duration as the API shows it: `5m`, `90s`, `1h30m`.
pub fn format_duration(secs: u32) -> String {
    if secs == 0 {
        return "0s".into();
    }
    let (h, m, s) = (secs / 3600, secs % 3600 / 60, secs % 60);
    let mut out = String::new();
    for (n, unit) in [(h, "h"), (m, "m"), (s, "s")] {
        if n > 0 {
            out.push_str(&format!("{n}{unit}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn durations_read_and_print_alike() {
        for (input, secs) in [
            (json!(300), 300),
            (json!("5m"), 300),
            (json!("90s"), 90),
            (json!("1h30m"), 5400),
            (json!("45"), 45),
        ] {
            assert_eq!(parse_duration(&input).unwrap(), secs, "{input}");
        }
        for bad in [
            json!("5 minutes"),
            json!(""),
            json!(-1),
            json!("m"),
            json!(true),
        ] {
            assert!(parse_duration(&bad).is_err(), "{bad}");
        }
        assert_eq!(format_duration(5400), "1h30m");
        assert_eq!(format_duration(300), "5m");
        assert_eq!(format_duration(0), "0s");
    }

    #[test]
    fn hysteresis_needs_the_value_back_past_the_recovery_threshold() {
        let record = RuleRecord {
            id: "r".into(),
            name: "cpu".into(),
            metric: "cpu".into(),
            mount: None,
            comparison: ">".into(),
            threshold: 90.0,
            recovery_threshold: Some(80.0),
            for_secs: 0,
            severity: crate::events::Severity::Warning,
            scope: "all".into(),
            scope_value: None,
            enabled: true,
            channels: None,
            created_by: None,
            created_at: chrono::Utc::now(),
            updated_at: chrono::Utc::now(),
        };
        let rule = Rule::compile(record.clone()).unwrap();
        assert!(rule.breached(91.0) && !rule.breached(90.0));
        assert!(
            !rule.recovered(85.0),
            "between the two thresholds it keeps firing"
        );
        assert!(rule.recovered(80.0));
        let wrong_side = RuleRecord {
            recovery_threshold: Some(95.0),
            ..record
        };
        let e = Rule::compile(wrong_side).unwrap_err().to_string();
        assert!(e.contains("recovery_threshold"), "{e}");
    }
}
