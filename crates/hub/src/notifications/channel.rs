//! Notification channel kinds: their settings, how they are validated and how the API shows
//! them (never a secret).

use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value, json};

use crate::error::{Error, Result};
use crate::events::{EventType, Severity};
use crate::webhooks::ssrf::SsrfPolicy;

/// Every channel kind, as the API names them.
pub const KINDS: &[&str] = &[
    "email", "slack", "discord", "teams", "telegram", "ntfy", "webhook",
];

/// Event types a channel gets when it names none.
pub const DEFAULT_EVENT_TYPES: &[EventType] = &[
    EventType::AlertTriggered,
    EventType::AlertResolved,
    EventType::ServerOffline,
    EventType::ServerOnline,
    EventType::WebhookDisabled,
    EventType::ChannelDisabled,
];

/// Settings keys that hold secrets: sealed at rest, never shown, kept when an update omits them.
const SECRET_KEYS: &[&str] = &["url", "password", "bot_token", "token", "secret"];
/// Settings keys that say where secrets are sent; changing one requires the secrets again.
const DESTINATION_KEYS: &[&str] = &["host", "port", "server_url", "api_url", "url"];

/// How an SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (submission, port 587).
    Starttls,
    /// TLS from the first byte (submissions, port 465).
    Implicit,
    /// No TLS: only to an address in `webhooks.allow_cidrs` (a relay on the LAN, tests).
    None,
}

/// A channel's validated settings; stored sealed as JSON. `Debug` shows no secret.
#[derive(Clone, Serialize, Deserialize)]
#[serde(tag = "kind", content = "config", rename_all = "lowercase")]
pub enum ChannelConfig {
    Email {
        host: String,
        port: u16,
        tls: SmtpTls,
        username: Option<String>,
        password: Option<String>,
        from: String,
        to: Vec<String>,
    },
    Slack {
        url: String,
    },
    Discord {
        url: String,
    },
    Teams {
        url: String,
    },
    Telegram {
        bot_token: String,
        chat_id: String,
        api_url: String,
    },
    Ntfy {
        server_url: String,
        topic: String,
        token: Option<String>,
    },
    Webhook {
        url: String,
        secret: Option<String>,
    },
}

impl std::fmt::Debug for ChannelConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ChannelConfig")
            .field("kind", &self.kind())
            .field("destination", &self.destination())
            .finish_non_exhaustive()
    }
}

/// Which events a channel gets beyond its event types, and how fast.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Routing {
    /// Events below this severity are not sent.
    pub min_severity: Severity,
    /// When not empty: events about a server go out only if it carries one of these tags
    /// (events about no server are not filtered by tags).
    pub tags: Vec<String>,
    /// Events of one group (an alert rule, or an event type) arriving within this many
    /// seconds go out as one message; 0 sends each event at once.
    pub group_window_secs: u32,
    /// Messages per minute at most; more wait (and gather further events meanwhile).
    pub rate_limit_per_minute: u32,
}

impl ChannelConfig {
    /// The kind's API name.
    pub fn kind(&self) -> &'static str {
        match self {
            ChannelConfig::Email { .. } => "email",
            ChannelConfig::Slack { .. } => "slack",
            ChannelConfig::Discord { .. } => "discord",
            ChannelConfig::Teams { .. } => "teams",
            ChannelConfig::Telegram { .. } => "telegram",
            ChannelConfig::Ntfy { .. } => "ntfy",
            ChannelConfig::Webhook { .. } => "webhook",
        }
    }

    /// Validate `config` for `kind`. `previous` fills secret keys the request left out (an
    /// edit need not repeat a password). Errors name the field, e.g. `config.to[1]`.
    pub fn parse(
        kind: &str,
        config: &Value,
        previous: Option<&ChannelConfig>,
        policy: &SsrfPolicy,
    ) -> Result<ChannelConfig> {
        let Some(given) = config.as_object() else {
            return Err(Error::invalid("config", "must be a JSON object"));
        };
        let mut obj = given.clone();
        if let Some(prev) = previous.filter(|p| p.kind() == kind) {
            let prev = serde_json::to_value(prev).expect("config serialises");
            if let Some(prev) = prev.get("config").and_then(Value::as_object) {
                // A kept secret must not follow a changed destination: an edit that points
                // the host elsewhere would otherwise send the stored password there.
                let moved = DESTINATION_KEYS
                    .iter()
                    .find(|k| obj.get(**k).is_some_and(|v| Some(v) != prev.get(**k)));
                for key in SECRET_KEYS {
                    let Some(stored) = prev.get(*key).filter(|v| !v.is_null()) else {
                        continue;
                    };
                    if obj.contains_key(*key) {
                        continue;
                    }
                    if let Some(moved) = moved {
                        return Err(Error::invalid(
                            format!("config.{key}"),
                            format!("give it again: config.{moved} changed"),
                        ));
                    }
                    obj.insert((*key).to_string(), stored.clone());
                }
            }
        }
        let f = Fields(&obj);
        let parsed = match kind {
            "email" => {
                f.only(&["host", "port", "tls", "username", "password", "from", "to"])?;
                let tls = match f.opt_str("tls")?.as_deref().unwrap_or("starttls") {
                    "starttls" => SmtpTls::Starttls,
                    "implicit" => SmtpTls::Implicit,
                    "none" => SmtpTls::None,
                    _ => {
                        return Err(Error::invalid(
                            "config.tls",
                            "must be starttls, implicit or none",
                        ));
                    }
                };
                let host = f.req_str("host")?;
                check_smtp_host(&host, tls, policy)?;
                let port = match f.0.get("port") {
                    None | Some(Value::Null) => match tls {
                        SmtpTls::Implicit => 465,
                        SmtpTls::Starttls => 587,
                        SmtpTls::None => 25,
                    },
                    Some(v) => v
                        .as_u64()
                        .and_then(|p| u16::try_from(p).ok())
                        .filter(|p| *p > 0)
                        .ok_or_else(|| {
                            Error::invalid("config.port", "must be a port number (1-65535)")
                        })?,
                };
                let username = f.opt_str("username")?.filter(|u| !u.is_empty());
                let password = f.opt_str("password")?.filter(|p| !p.is_empty());
                if password.is_some() && username.is_none() {
                    return Err(Error::invalid(
                        "config.username",
                        "is required with a password",
                    ));
                }
                let from = f.req_str("from")?;
                lettre::message::Mailbox::from_str(&from).map_err(|_| {
                    Error::invalid(
                        "config.from",
                        format!("{from:?} is not an e-mail address (name@example.com or Name <name@example.com>)"),
                    )
                })?;
                let to = f.str_list("to")?;
                if to.is_empty() || to.len() > 50 {
                    return Err(Error::invalid("config.to", "must list 1 to 50 recipients"));
                }
                for (i, addr) in to.iter().enumerate() {
                    lettre::Address::from_str(addr).map_err(|_| {
                        Error::invalid(
                            format!("config.to[{i}]"),
                            format!("{addr:?} is not an e-mail address"),
                        )
                    })?;
                }
                ChannelConfig::Email {
                    host,
                    port,
                    tls,
                    username,
                    password,
                    from,
                    to,
                }
            }
            "slack" | "discord" | "teams" => {
                f.only(&["url"])?;
                let url = f.req_str("url")?;
                check_https_url("config.url", &url, policy)?;
                match kind {
                    "slack" => ChannelConfig::Slack { url },
                    "discord" => ChannelConfig::Discord { url },
                    _ => ChannelConfig::Teams { url },
                }
            }
            "telegram" => {
                f.only(&["bot_token", "chat_id", "api_url"])?;
                let bot_token = f.req_str("bot_token")?;
                // Bot tokens are `<bot id>:<secret>`; the token also goes into the URL path.
                let well_formed = bot_token.split_once(':').is_some_and(|(id, secret)| {
                    !id.is_empty()
                        && id.bytes().all(|b| b.is_ascii_digit())
                        && secret.len() >= 20
                        && secret
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                });
                if !well_formed {
                    return Err(Error::invalid(
                        "config.bot_token",
                        "must be a bot token from @BotFather (digits, a colon, then the secret)",
                    ));
                }
                let chat_id = match f.0.get("chat_id") {
                    Some(Value::Number(n)) if n.is_i64() => n.to_string(),
                    Some(Value::String(s)) if valid_chat_id(s.trim()) => s.trim().to_string(),
                    None | Some(Value::Null) => {
                        return Err(Error::invalid("config.chat_id", "is required"));
                    }
                    _ => {
                        return Err(Error::invalid(
                            "config.chat_id",
                            "must be a numeric chat id or an @channel name",
                        ));
                    }
                };
                let api_url = f
                    .opt_str("api_url")?
                    .unwrap_or_else(|| "https://api.telegram.org".into());
                check_https_url("config.api_url", &api_url, policy)?;
                ChannelConfig::Telegram {
                    bot_token,
                    chat_id,
                    api_url: api_url.trim_end_matches('/').to_string(),
                }
            }
            "ntfy" => {
                f.only(&["server_url", "topic", "token"])?;
                let server_url = f
                    .opt_str("server_url")?
                    .unwrap_or_else(|| "https://ntfy.sh".into());
                check_https_url("config.server_url", &server_url, policy)?;
                let topic = f.req_str("topic")?;
                let topic_ok = topic.len() <= 64
                    && topic
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
                if !topic_ok {
                    return Err(Error::invalid(
                        "config.topic",
                        "must be 1 to 64 letters, digits, _ or -",
                    ));
                }
                let token = f.opt_str("token")?.filter(|t| !t.is_empty());
                if token
                    .as_deref()
                    .is_some_and(|t| !t.bytes().all(|b| b.is_ascii_graphic()))
                {
                    return Err(Error::invalid("config.token", "must be printable ASCII"));
                }
                ChannelConfig::Ntfy {
                    server_url: server_url.trim_end_matches('/').to_string(),
                    topic,
                    token,
                }
            }
            "webhook" => {
                f.only(&["url", "secret"])?;
                let url = f.req_str("url")?;
                policy
                    .check_url(&url)
                    .map_err(|e| Error::invalid("config.url", e))?;
                let secret = f.opt_str("secret")?.filter(|s| !s.is_empty());
                if secret
                    .as_deref()
                    .is_some_and(|s| s.len() > 256 || s.chars().any(char::is_control))
                {
                    return Err(Error::invalid(
                        "config.secret",
                        "must be at most 256 printable characters",
                    ));
                }
                ChannelConfig::Webhook { url, secret }
            }
            other => {
                return Err(Error::invalid(
                    "kind",
                    format!("unknown kind {other:?}; use one of {}", KINDS.join(", ")),
                ));
            }
        };
        Ok(parsed)
    }

    /// The settings as the API shows them: secrets replaced by whether they are set, URLs
    /// that carry tokens cut to their host.
    pub fn view(&self) -> Value {
        match self {
            ChannelConfig::Email {
                host,
                port,
                tls,
                username,
                password,
                from,
                to,
            } => json!({
                "host": host, "port": port, "tls": tls, "username": username,
                "has_password": password.is_some(), "from": from, "to": to,
            }),
            ChannelConfig::Slack { url }
            | ChannelConfig::Discord { url }
            | ChannelConfig::Teams { url } => json!({ "url": url_hint(url) }),
            ChannelConfig::Telegram {
                chat_id, api_url, ..
            } => json!({ "chat_id": chat_id, "api_url": api_url, "has_bot_token": true }),
            ChannelConfig::Ntfy {
                server_url,
                topic,
                token,
            } => json!({
                "server_url": server_url, "topic": topic, "has_token": token.is_some(),
            }),
            ChannelConfig::Webhook { url, secret } => {
                json!({ "url": url_hint(url), "has_secret": secret.is_some() })
            }
        }
    }

    /// Where messages go, without secrets (the `url` column and log lines).
    pub fn destination(&self) -> String {
        match self {
            ChannelConfig::Email { host, port, .. } => format!("smtp://{host}:{port}"),
            ChannelConfig::Slack { url }
            | ChannelConfig::Discord { url }
            | ChannelConfig::Teams { url }
            | ChannelConfig::Webhook { url, .. } => url_hint(url),
            ChannelConfig::Telegram { api_url, .. } => format!("{api_url}/bot…/sendMessage"),
            ChannelConfig::Ntfy { server_url, .. } => server_url.clone(),
        }
    }
}

/// Parse and check a routing object; absent keys take the defaults given.
pub fn parse_routing(
    min_severity: Option<&str>,
    tags: Option<Vec<String>>,
    group_window_secs: Option<u32>,
    rate_limit_per_minute: Option<u32>,
    base: Routing,
) -> Result<Routing> {
    let mut r = base;
    if let Some(s) = min_severity {
        r.min_severity = Severity::parse(s).ok_or_else(|| {
            Error::invalid("min_severity", "must be info, warning, error or critical")
        })?;
    }
    if let Some(tags) = tags {
        // Server tags' own rules, lower-cased the same way, so that they match.
        r.tags = crate::fleet::validate::tags(&tags)?;
    }
    if let Some(w) = group_window_secs {
        if w > 3600 {
            return Err(Error::invalid(
                "group_window_secs",
                "must be between 0 and 3600",
            ));
        }
        r.group_window_secs = w;
    }
    if let Some(n) = rate_limit_per_minute {
        if !(1..=600).contains(&n) {
            return Err(Error::invalid(
                "rate_limit_per_minute",
                "must be between 1 and 600",
            ));
        }
        r.rate_limit_per_minute = n;
    }
    Ok(r)
}

fn valid_chat_id(s: &str) -> bool {
    let numeric = s.strip_prefix('-').unwrap_or(s);
    (!numeric.is_empty() && numeric.bytes().all(|b| b.is_ascii_digit()))
        || s.strip_prefix('@').is_some_and(|n| {
            (5..=32).contains(&n.len()) && n.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        })
}

/// `https://hooks.slack.com/…`: the host, never the path that holds the token.
fn url_hint(url: &str) -> String {
    match reqwest::Url::parse(url) {
        Ok(u) => {
            let port = u.port().map(|p| format!(":{p}")).unwrap_or_default();
            format!("{}://{}{port}/…", u.scheme(), u.host_str().unwrap_or(""))
        }
        Err(_) => "…".into(),
    }
}

/// Chat services take https only. Plain http is accepted only to an address literal the
/// operator exempted in `webhooks.allow_cidrs` (a relay on the LAN, tests on loopback).
fn check_https_url(field: &str, url: &str, policy: &SsrfPolicy) -> Result<()> {
    let parsed = policy
        .check_url(url)
        .map_err(|e| Error::invalid(field, e))?;
    if parsed.scheme() == "https" || exempt_literal(&parsed, policy) {
        return Ok(());
    }
    Err(Error::invalid(
        field,
        "must be an https URL (http only to an address in webhooks.allow_cidrs)",
    ))
}

fn exempt_literal(url: &reqwest::Url, policy: &SsrfPolicy) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => policy.exempts(IpAddr::V4(ip)),
        Some(url::Host::Ipv6(ip)) => policy.exempts(IpAddr::V6(ip)),
        _ => false,
    }
}

fn check_smtp_host(host: &str, tls: SmtpTls, policy: &SsrfPolicy) -> Result<()> {
    let field = "config.host";
    if host.len() > 253 || host.contains(['/', ':', ' ', '@']) && host.parse::<IpAddr>().is_err() {
        return Err(Error::invalid(
            field,
            "must be a host name or an IP address",
        ));
    }
    match host.parse::<IpAddr>() {
        Ok(ip) => {
            policy.check_ip(ip).map_err(|e| Error::invalid(field, e))?;
            if tls == SmtpTls::None && !policy.exempts(ip) {
                return Err(Error::invalid(
                    "config.tls",
                    "none is allowed only to an address in webhooks.allow_cidrs; use starttls or implicit",
                ));
            }
        }
        Err(_) => {
            policy
                .check_host_name(host)
                .map_err(|e| Error::invalid(field, e))?;
            if tls == SmtpTls::None {
                return Err(Error::invalid(
                    "config.tls",
                    "none is allowed only to an address in webhooks.allow_cidrs; use starttls or implicit",
                ));
            }
        }
    }
    Ok(())
}

/// Typed access to a settings object, with errors that name `config.<key>`.
struct Fields<'a>(&'a Map<String, Value>);

impl Fields<'_> {
    fn only(&self, allowed: &[&str]) -> Result<()> {
        match self.0.keys().find(|k| !allowed.contains(&k.as_str())) {
            Some(k) => Err(Error::invalid(
                format!("config.{k}"),
                format!(
                    "is not a setting of this kind; known: {}",
                    allowed.join(", ")
                ),
            )),
            None => Ok(()),
        }
    }

    fn opt_str(&self, key: &str) -> Result<Option<String>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Ok(None),
            Some(Value::String(s)) if s.len() <= 2048 && !s.chars().any(char::is_control) => {
                Ok(Some(s.trim().to_string()))
            }
            Some(_) => Err(Error::invalid(
                format!("config.{key}"),
                "must be a string of at most 2048 printable characters",
            )),
        }
    }

    fn req_str(&self, key: &str) -> Result<String> {
        self.opt_str(key)?
            .filter(|s| !s.is_empty())
            .ok_or_else(|| Error::invalid(format!("config.{key}"), "is required"))
    }

    fn str_list(&self, key: &str) -> Result<Vec<String>> {
        match self.0.get(key) {
            None | Some(Value::Null) => Err(Error::invalid(format!("config.{key}"), "is required")),
            Some(Value::String(s)) => Ok(vec![s.trim().to_string()]),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .map(|(i, v)| {
                    v.as_str().map(|s| s.trim().to_string()).ok_or_else(|| {
                        Error::invalid(format!("config.{key}[{i}]"), "must be a string")
                    })
                })
                .collect(),
            Some(_) => Err(Error::invalid(
                format!("config.{key}"),
                "must be a list of strings",
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_output_shows_no_secret() {
        let policy = SsrfPolicy::default();
        let c = ChannelConfig::parse(
            "slack",
            &json!({ "url": "https://hooks.slack.com/services/T0/B0/tokentoken" }),
            None,
            &policy,
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("tokentoken"), "{shown}");
        assert!(shown.contains("hooks.slack.com"), "{shown}");
    }

    #[test]
    fn an_edit_keeps_secrets_it_leaves_out_and_replaces_those_it_gives() {
        let policy = SsrfPolicy::default();
        let first = ChannelConfig::parse(
            "ntfy",
            &json!({ "topic": "alerts", "token": "tk_old" }),
            None,
            &policy,
        )
        .unwrap();
        let kept =
            ChannelConfig::parse("ntfy", &json!({ "topic": "other" }), Some(&first), &policy)
                .unwrap();
        assert!(
            matches!(&kept, ChannelConfig::Ntfy { topic, token: Some(t), .. }
            if topic == "other" && t == "tk_old")
        );
        let replaced = ChannelConfig::parse(
            "ntfy",
            &json!({ "topic": "other", "token": "tk_new" }),
            Some(&first),
            &policy,
        )
        .unwrap();
        assert!(matches!(replaced, ChannelConfig::Ntfy { token: Some(t), .. } if t == "tk_new"));
        // Pointing the channel elsewhere without the token again is refused.
        let e = ChannelConfig::parse(
            "ntfy",
            &json!({ "topic": "alerts", "server_url": "https://ntfy.example.com" }),
            Some(&first),
            &policy,
        )
        .unwrap_err();
        assert!(
            e.to_string().starts_with("config.token: give it again"),
            "{e}"
        );
    }

    #[test]
    fn smtp_hosts_pass_the_ssrf_guard() {
        let policy = SsrfPolicy::default();
        let mail =
            |host: &str| json!({ "host": host, "from": "a@example.com", "to": ["b@example.com"] });
        for host in ["127.0.0.1", "10.1.2.3", "mail.internal", "localhost"] {
            let e = ChannelConfig::parse("email", &mail(host), None, &policy).unwrap_err();
            assert!(e.to_string().starts_with("config.host"), "{host}: {e}");
        }
        assert!(ChannelConfig::parse("email", &mail("smtp.example.com"), None, &policy).is_ok());
    }
}
