//! What a report must satisfy before anything of it is written.

use chrono::{DateTime, Duration, Utc};
use smon_proto::{
    Inventory, MAX_LIST_ITEMS as MAX_ITEMS, MAX_SAMPLES_PER_REPORT, MAX_TEXT_BYTES as MAX_TEXT,
    PROTOCOL_VERSION, Report, Sample,
};

use crate::error::{Error, Result};

/// How far in the future a sample may be dated (clocks drift).
pub const MAX_CLOCK_SKEW: Duration = Duration::minutes(5);

fn finite(field: &str, v: f64) -> Result<f64> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Error::invalid(field, "must be a finite number"))
    }
}

fn non_negative(field: &str, v: f64) -> Result<()> {
    if finite(field, v)? < 0.0 {
        return Err(Error::invalid(
            field,
            format!("must not be negative, got {v}"),
        ));
    }
    Ok(())
}

fn percent(field: &str, v: f64) -> Result<()> {
    if !(0.0..=100.0).contains(&finite(field, v)?) {
        return Err(Error::invalid(
            field,
            format!("must be between 0 and 100, got {v}"),
        ));
    }
    Ok(())
}

fn at_most(field: &str, part: u64, total_field: &str, total: u64) -> Result<()> {
    if part > total {
        return Err(Error::invalid(
            field,
            format!("{part} exceeds {total_field} ({total})"),
        ));
    }
    Ok(())
}

fn count(field: &str, n: usize, max: usize) -> Result<()> {
    if n > max {
        return Err(Error::invalid(
            field,
            format!("at most {max} entries, got {n}"),
        ));
    }
    Ok(())
}

fn text(field: &str, s: &str) -> Result<()> {
    if s.len() > MAX_TEXT || s.chars().any(char::is_control) {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_TEXT} bytes without control characters"),
        ));
    }
    Ok(())
}

/// Check a whole report: any fault rejects all of it, naming the field.
/// `oldest` is the oldest sample time still kept (the raw retention).
pub fn report(r: &Report, now: DateTime<Utc>, oldest: DateTime<Utc>) -> Result<()> {
    if r.protocol != PROTOCOL_VERSION {
        return Err(Error::invalid(
            "protocol",
            format!(
                "version {} is not spoken by this hub, which speaks {PROTOCOL_VERSION}",
                r.protocol
            ),
        ));
    }
    if !(1..=3600).contains(&r.interval_secs) {
        return Err(Error::invalid(
            "interval_secs",
            "must be between 1 and 3600",
        ));
    }
    if r.agent_version.is_empty() || r.agent_version.len() > 64 {
        return Err(Error::invalid("agent_version", "must be 1 to 64 bytes"));
    }
    if let Some(d) = r.default_interval_secs {
        if !(1..=3600).contains(&d) {
            return Err(Error::invalid(
                "default_interval_secs",
                "must be between 1 and 3600",
            ));
        }
    }
    text("agent_version", &r.agent_version)?;
    count("samples", r.samples.len(), MAX_SAMPLES_PER_REPORT)?;
    if r.samples.is_empty() && r.inventory.is_none() {
        return Err(Error::invalid(
            "samples",
            "a report needs samples or an inventory",
        ));
    }
    for (i, s) in r.samples.iter().enumerate() {
        sample(&format!("samples[{i}]"), s, now, oldest)?;
    }
    if let Some(inv) = &r.inventory {
        inventory(inv)?;
    }
    Ok(())
}

fn sample(at: &str, s: &Sample, now: DateTime<Utc>, oldest: DateTime<Utc>) -> Result<()> {
    let f = |name: &str| format!("{at}.{name}");
    if s.ts > now + MAX_CLOCK_SKEW {
        return Err(Error::invalid(
            f("ts"),
            "is more than 5 minutes in the future (check the agent's clock)",
        ));
    }
    if s.ts < oldest {
        return Err(Error::invalid(
            f("ts"),
            "is older than the raw history kept (fleet.raw_retention_hours)",
        ));
    }
    percent(&f("cpu_percent"), s.cpu_percent)?;
    count(&f("cpu_per_core"), s.cpu_per_core.len(), MAX_ITEMS * 4)?;
    for (i, v) in s.cpu_per_core.iter().enumerate() {
        percent(&f(&format!("cpu_per_core[{i}]")), *v)?;
    }
    for (i, v) in s.load.iter().enumerate() {
        non_negative(&f(&format!("load[{i}]")), *v)?;
    }
    let m = &s.memory;
    if m.total == 0 {
        return Err(Error::invalid(f("memory.total"), "must be positive"));
    }
    at_most(&f("memory.used"), m.used, "memory.total", m.total)?;
    at_most(&f("memory.available"), m.available, "memory.total", m.total)?;
    at_most(&f("swap.used"), s.swap.used, "swap.total", s.swap.total)?;
    count(&f("filesystems"), s.filesystems.len(), MAX_ITEMS)?;
    for (i, fs) in s.filesystems.iter().enumerate() {
        let g = |name: &str| f(&format!("filesystems[{i}].{name}"));
        if fs.mount.is_empty() {
            return Err(Error::invalid(g("mount"), "must not be empty"));
        }
        text(&g("mount"), &fs.mount)?;
        text(&g("fs_type"), &fs.fs_type)?;
        at_most(&g("used"), fs.used, "total", fs.total)?;
    }
    non_negative(&f("disk_io.read_bps"), s.disk_io.read_bps)?;
    non_negative(&f("disk_io.write_bps"), s.disk_io.write_bps)?;
    count(&f("network"), s.network.len(), MAX_ITEMS)?;
    for (i, n) in s.network.iter().enumerate() {
        let g = |name: &str| f(&format!("network[{i}].{name}"));
        text(&g("name"), &n.name)?;
        non_negative(&g("rx_bps"), n.rx_bps)?;
        non_negative(&g("tx_bps"), n.tx_bps)?;
    }
    non_negative(&f("network_total.rx_bps"), s.network_total.rx_bps)?;
    non_negative(&f("network_total.tx_bps"), s.network_total.tx_bps)?;
    count(&f("temperatures"), s.temperatures.len(), MAX_ITEMS)?;
    for (i, t) in s.temperatures.iter().enumerate() {
        let g = |name: &str| f(&format!("temperatures[{i}].{name}"));
        text(&g("label"), &t.label)?;
        if !(-100.0..=200.0).contains(&finite(&g("celsius"), t.celsius)?) {
            return Err(Error::invalid(
                g("celsius"),
                format!("{} is not a plausible temperature", t.celsius),
            ));
        }
    }
    Ok(())
}

fn inventory(inv: &Inventory) -> Result<()> {
    for (name, value) in [
        ("hostname", &inv.hostname),
        ("os_name", &inv.os_name),
        ("os_version", &inv.os_version),
        ("kernel", &inv.kernel),
        ("arch", &inv.arch),
        ("cpu_model", &inv.cpu_model),
        ("agent_version", &inv.agent_version),
    ] {
        text(&format!("inventory.{name}"), value)?;
    }
    count("inventory.filesystems", inv.filesystems.len(), MAX_ITEMS)?;
    for (i, fs) in inv.filesystems.iter().enumerate() {
        text(&format!("inventory.filesystems[{i}].mount"), &fs.mount)?;
        text(&format!("inventory.filesystems[{i}].device"), &fs.device)?;
    }
    count("inventory.ip_addresses", inv.ip_addresses.len(), MAX_ITEMS)?;
    for (i, ip) in inv.ip_addresses.iter().enumerate() {
        text(&format!("inventory.ip_addresses[{i}]"), ip)?;
    }
    Ok(())
}

/// A server name: 1 to 100 characters, no control characters, not only spaces.
pub fn server_name(name: &str) -> Result<String> {
    let name = name.trim();
    if name.is_empty() || name.chars().count() > 100 || name.chars().any(char::is_control) {
        return Err(Error::invalid(
            "name",
            "must be 1 to 100 characters without control characters",
        ));
    }
    Ok(name.to_string())
}

/// Tags: at most 20, each 1 to 50 of letters, digits and `-_.:/`, lower-cased, no duplicates.
pub fn tags(tags: &[String]) -> Result<Vec<String>> {
    count("tags", tags.len(), 20)?;
    let mut out: Vec<String> = Vec::new();
    for tag in tags {
        let t = tag.trim().to_lowercase();
        let ok = !t.is_empty()
            && t.len() <= 50
            && t.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.:/".contains(c));
        if !ok {
            return Err(Error::invalid(
                "tags",
                format!("{tag:?} must be 1 to 50 letters, digits or -_.:/"),
            ));
        }
        if !out.contains(&t) {
            out.push(t);
        }
    }
    Ok(out)
}
