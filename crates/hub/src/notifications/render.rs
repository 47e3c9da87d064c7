//! Messages from events: a subject and a plain-text body per event type, from templates with
//! `{placeholder}`s (defaults below, overridable in `[notifications.templates]`), and one
//! message for a group of events.

use std::collections::BTreeMap;

use crate::config::TemplateConfig;
use crate::events::{Event, Severity};

/// Lines a grouped message lists before "… and N more".
const GROUP_LINES: usize = 25;

/// Every placeholder a template may use.
pub const PLACEHOLDERS: &[&str] = &[
    "server",
    "server_id",
    "rule",
    "metric",
    "value",
    "threshold",
    "comparison",
    "duration",
    "severity",
    "event_type",
    "time",
    "link",
    "resolution",
    "name",
    "reason",
    "message",
    "username",
];

/// The built-in (subject, body) of an event.
fn default_template(e: &Event) -> (&'static str, &'static str) {
    let offline = e.meta.get("metric").and_then(|m| m.as_str()) == Some("offline");
    let first_report = e.meta.get("previous_status").and_then(|m| m.as_str()) == Some("unknown");
    match e.event_type.as_str() {
        // An offline rule has no value to speak of: say how long the server was silent.
        "alert.triggered" if offline => (
            "[{severity}] {rule} on {server}",
            "{rule} is firing: {server} stopped reporting.\n{link}",
        ),
        "alert.resolved" if offline => (
            "[resolved] {rule} on {server}",
            "{rule} resolved after firing for {duration}: {server} {resolution}.\n{link}",
        ),
        "alert.triggered" => (
            "[{severity}] {rule} on {server}",
            "{rule} is firing on {server}: {metric} is {value} ({comparison} {threshold} for {duration}).\n{link}",
        ),
        "alert.resolved" => (
            "[resolved] {rule} on {server}",
            "{rule} resolved on {server} after firing for {duration}: {metric} is {value} ({resolution}).\n{link}",
        ),
        "alert.acknowledged" => (
            "[acknowledged] {rule} on {server}",
            "{username} acknowledged {rule} on {server}.\n{link}",
        ),
        "server.offline" => (
            "[{severity}] {server} is offline",
            "{server} stopped reporting ({time}).\n{link}",
        ),
        "server.online" if first_report => (
            "{server} is online",
            "{server} reported for the first time ({time}).\n{link}",
        ),
        "server.online" => (
            "{server} is online",
            "{server} is reporting again ({time}).\n{link}",
        ),
        "webhook.disabled" => (
            "[{severity}] webhook {name} was disabled",
            "The hub disabled webhook {name}: {reason}. Fix the receiver, then enable it again.",
        ),
        "notification_channel.disabled" => (
            "[{severity}] notification channel {name} was disabled",
            "The hub disabled notification channel {name}: {reason}. Fix it, then enable it again.",
        ),
        "notification_channel.test" => ("Test notification from Server Monitor", "{message}"),
        _ => (
            "[{severity}] {event_type} {server}",
            "{event_type} at {time} (server: {server}, by: {username}).",
        ),
    }
}

/// One message, ready for any channel kind.
#[derive(Debug, Clone)]
pub struct Message {
    pub subject: String,
    pub body: String,
    /// The most serious severity among the events.
    pub severity: Severity,
    pub event_type: String,
    /// Events the message covers.
    pub count: usize,
    /// The UI page of the (first) server, when a public URL is configured.
    pub link: Option<String>,
}

/// Renders messages with the configured templates.
#[derive(Debug, Clone, Default)]
pub struct Renderer {
    overrides: BTreeMap<String, TemplateConfig>,
    public_url: Option<String>,
}

/// Check a template's placeholders; the error names the unknown one.
pub fn check_template(text: &str) -> Result<(), String> {
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else {
            return Err(format!("unclosed {{ in {text:?}"));
        };
        let name = &after[..end];
        if !PLACEHOLDERS.contains(&name) {
            return Err(format!(
                "unknown placeholder {{{name}}}; known: {}",
                PLACEHOLDERS.join(", ")
            ));
        }
        rest = &after[end + 1..];
    }
    Ok(())
}

fn fill(template: &str, vars: &BTreeMap<&str, String>) -> String {
    let mut out = String::with_capacity(template.len() + 64);
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        out.push_str(&rest[..start]);
        let after = &rest[start + 1..];
        match after.find('}') {
            Some(end) => {
                let name = &after[..end];
                match vars.get(name) {
                    Some(v) => out.push_str(v),
                    None => out.push_str(&rest[start..start + end + 2]),
                }
                rest = &after[end + 1..];
            }
            None => {
                out.push_str(&rest[start..]);
                rest = "";
            }
        }
    }
    out.push_str(rest);
    out
}

/// Fill a template line by line; a line with placeholders that all came out empty (`Link:
/// {link}` without a public URL) is dropped, blank lines written in the template stay.
fn fill_lines(template: &str, vars: &BTreeMap<&str, String>) -> String {
    template
        .split('\n')
        .filter(|line| {
            let names = placeholders(line);
            names.is_empty()
                || names
                    .iter()
                    .any(|n| vars.get(n).is_some_and(|v| !v.trim().is_empty()))
        })
        .map(|line| fill(line, vars))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The placeholder names in `text`.
fn placeholders(text: &str) -> Vec<&str> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find('{') {
        let after = &rest[start + 1..];
        let Some(end) = after.find('}') else { break };
        names.push(&after[..end]);
        rest = &after[end + 1..];
    }
    names
}

/// `95.3`, `2`, `0.25`: at most two decimals, no trailing zeros.
fn number(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

fn with_unit(metric: &str, v: f64) -> String {
    match metric {
        "cpu" | "memory" | "swap" | "disk" => format!("{} %", number(v)),
        "temperature" => format!("{} °C", number(v)),
        "net_rx" | "net_tx" => bytes_per_sec(v),
        _ => number(v),
    }
}

fn bytes_per_sec(v: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let mut v = v;
    let mut unit = 0;
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{} {}", number(v), units[unit])
}

/// `45 s`, `5 min`, `2 h 5 min`, `3 d 4 h`.
pub fn duration(secs: i64) -> String {
    let secs = secs.max(0);
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min", secs / 60),
        3600..86_400 => match (secs % 3600) / 60 {
            0 => format!("{} h", secs / 3600),
            m => format!("{} h {m} min", secs / 3600),
        },
        _ => match (secs % 86_400) / 3600 {
            0 => format!("{} d", secs / 86_400),
            h => format!("{} d {h} h", secs / 86_400),
        },
    }
}

impl Renderer {
    /// A renderer with `overrides` (checked by the config) and links under `public_url`.
    pub fn new(overrides: BTreeMap<String, TemplateConfig>, public_url: &str) -> Self {
        let public_url =
            Some(public_url.trim_end_matches('/').to_string()).filter(|u| !u.is_empty());
        Self {
            overrides,
            public_url,
        }
    }

    fn link(&self, event: &Event) -> Option<String> {
        let base = self.public_url.as_ref()?;
        Some(match &event.server_id {
            Some(id) => format!("{base}/servers/{id}"),
            None => base.clone(),
        })
    }

    fn vars(&self, e: &Event) -> BTreeMap<&'static str, String> {
        let meta_str = |k: &str| match e.meta.get(k) {
            Some(serde_json::Value::String(s)) => s.clone(),
            Some(serde_json::Value::Null) | None => String::new(),
            Some(other) => other.to_string(),
        };
        let meta_f64 = |k: &str| e.meta.get(k).and_then(serde_json::Value::as_f64);
        let metric_name = meta_str("metric");
        let metric = match e.meta.get("mount").and_then(|m| m.as_str()) {
            Some(mount) => format!("{metric_name} {mount}"),
            None => metric_name.clone(),
        };
        let secs = e
            .meta
            .get("fired_for_secs")
            .or_else(|| e.meta.get("for_secs"))
            .and_then(serde_json::Value::as_i64);
        let mut v = BTreeMap::new();
        v.insert(
            "server",
            e.server_name
                .clone()
                .or_else(|| e.server_id.clone())
                .unwrap_or_else(|| "-".into()),
        );
        v.insert("server_id", e.server_id.clone().unwrap_or_default());
        v.insert("rule", meta_str("rule_name"));
        v.insert("metric", metric);
        v.insert(
            "value",
            meta_f64("value")
                .map(|x| with_unit(&metric_name, x))
                .unwrap_or_else(|| "no data".into()),
        );
        v.insert(
            "threshold",
            meta_f64("threshold")
                .map(|x| with_unit(&metric_name, x))
                .unwrap_or_default(),
        );
        v.insert("comparison", meta_str("comparison"));
        v.insert("duration", secs.map(duration).unwrap_or_default());
        v.insert("severity", e.severity.as_str().to_string());
        v.insert("event_type", e.event_type.clone());
        v.insert(
            "time",
            e.timestamp.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
        );
        v.insert("link", self.link(e).unwrap_or_default());
        v.insert("resolution", meta_str("resolution"));
        v.insert("name", meta_str("name"));
        v.insert("reason", meta_str("reason"));
        v.insert("message", meta_str("message"));
        v.insert(
            "username",
            e.username.clone().unwrap_or_else(|| "the hub".into()),
        );
        v
    }

    fn render_one(&self, e: &Event) -> (String, String) {
        let (subject, body) = default_template(e);
        let custom = self.overrides.get(&e.event_type);
        let subject = custom.and_then(|c| c.subject.as_deref()).unwrap_or(subject);
        let body = custom.and_then(|c| c.body.as_deref()).unwrap_or(body);
        let vars = self.vars(e);
        (fill_lines(subject, &vars), fill_lines(body, &vars))
    }

    /// One message for `events` (one event, or a group of one rule or one type).
    pub fn render(&self, events: &[Event]) -> Message {
        let first = events.first().expect("a group has an event");
        let severity = events
            .iter()
            .map(|e| e.severity)
            .max()
            .unwrap_or(first.severity);
        let (subject, body) = self.render_one(first);
        if events.len() == 1 {
            return Message {
                subject,
                body,
                severity,
                event_type: first.event_type.clone(),
                count: 1,
                link: self.link(first),
            };
        }
        let mut lines: Vec<String> = events
            .iter()
            .take(GROUP_LINES)
            .map(|e| format!("- {}", self.render_one(e).0))
            .collect();
        if events.len() > GROUP_LINES {
            lines.push(format!("… and {} more", events.len() - GROUP_LINES));
        }
        if let Some(base) = &self.public_url {
            lines.push(base.clone());
        }
        Message {
            subject: format!("{subject} (and {} more)", events.len() - 1),
            body: format!("{} events:\n{}", events.len(), lines.join("\n")),
            severity,
            event_type: first.event_type.clone(),
            count: events.len(),
            link: self.public_url.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::{EventType, Origin};

    fn triggered(server: &str, value: f64) -> Event {
        let mut e = Event::new(EventType::AlertTriggered, &Origin::default())
            .meta("rule_name", "CPU high")
            .meta("metric", "cpu")
            .meta("value", value)
            .meta("comparison", ">")
            .meta("threshold", 90.0)
            .meta("for_secs", 300);
        e.server_id = Some(format!("id-{server}"));
        e.server_name = Some(server.into());
        e.severity = Severity::Critical;
        e
    }

    #[test]
    fn an_alert_message_names_server_metric_value_threshold_duration_and_link() {
        let r = Renderer::new(BTreeMap::new(), "https://mon.example.com/");
        let m = r.render(&[triggered("web-1", 97.456)]);
        assert_eq!(m.subject, "[critical] CPU high on web-1");
        assert_eq!(
            m.body,
            "CPU high is firing on web-1: cpu is 97.46 % (> 90 % for 5 min).\nhttps://mon.example.com/servers/id-web-1"
        );
    }

    #[test]
    fn without_a_public_url_the_link_line_is_left_out() {
        let m = Renderer::default().render(&[triggered("web-1", 95.0)]);
        assert!(!m.body.contains('\n'), "{}", m.body);
    }

    #[test]
    fn a_group_lists_its_events_in_one_message() {
        let events: Vec<Event> = (0..30).map(|i| triggered(&format!("s{i}"), 95.0)).collect();
        let m = Renderer::default().render(&events);
        assert_eq!(m.count, 30);
        assert_eq!(m.subject, "[critical] CPU high on s0 (and 29 more)");
        assert!(
            m.body
                .starts_with("30 events:\n- [critical] CPU high on s0\n")
        );
        assert!(m.body.ends_with("… and 5 more"), "{}", m.body);
    }

    #[test]
    fn overrides_replace_the_default_and_unknown_placeholders_are_refused() {
        let mut o = BTreeMap::new();
        o.insert(
            "alert.triggered".to_string(),
            TemplateConfig {
                subject: Some("ALERT {server}: {value}".into()),
                body: None,
            },
        );
        let m = Renderer::new(o, "").render(&[triggered("db", 91.0)]);
        assert_eq!(m.subject, "ALERT db: 91 %");
        assert!(
            check_template("{server} {nope}")
                .unwrap_err()
                .contains("{nope}")
        );
        assert!(check_template("{server} {value}").is_ok());
    }

    #[test]
    fn an_offline_alert_says_the_server_stopped_reporting() {
        let mut e = triggered("db-2", 1.0);
        e.meta.insert("metric".into(), "offline".into());
        e.meta.insert("rule_name".into(), "Server offline".into());
        let m = Renderer::default().render(&[e]);
        assert_eq!(m.body, "Server offline is firing: db-2 stopped reporting.");
    }

    #[test]
    fn blank_lines_of_a_template_stay_and_lines_of_absent_values_go() {
        let mut o = BTreeMap::new();
        o.insert(
            "alert.triggered".to_string(),
            TemplateConfig {
                subject: None,
                body: Some("{server}\n\nvalue {value}\nLink: {link}".into()),
            },
        );
        let m = Renderer::new(o, "").render(&[triggered("db", 91.0)]);
        assert_eq!(m.body, "db\n\nvalue 91 %");
    }

    #[test]
    fn durations_read_naturally() {
        assert_eq!(duration(45), "45 s");
        assert_eq!(duration(300), "5 min");
        assert_eq!(duration(7500), "2 h 5 min");
        assert_eq!(duration(3 * 86_400 + 4 * 3600), "3 d 4 h");
    }
}
