//! Hub configuration: defaults, an optional TOML file, then `SMON_*` environment overrides.
//!
//! Every key has a default. The environment name of a key is `SMON_` followed by its path in
//! upper case with the parts joined by `_` (`auth.session_idle_secs` → `SMON_AUTH_SESSION_IDLE_SECS`).
//! The overrides are derived from the defaults themselves, so a new key gets its variable for free.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Everything the hub reads at start.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// Address the HTTP server binds to.
    pub listen: String,
    /// Directory for the SQLite database and other state.
    pub data_dir: PathBuf,
    /// Database URL; empty means SQLite at `<data_dir>/smon.db`.
    pub database_url: String,
    /// Password of the first admin, used only when the database has no user yet.
    #[serde(skip_serializing)]
    pub admin_password: Secret,
    /// Key for secrets at rest (32 bytes, base64 or hex); empty means `<data_dir>/secret.key`,
    /// generated on first start.
    #[serde(skip_serializing)]
    pub secret_key: Secret,
    /// Bearer token that may read `GET /api/metrics` (for Prometheus); empty means admins only.
    #[serde(skip_serializing)]
    pub metrics_token: Secret,
    /// Log output: `text` or `json`. The level comes from `RUST_LOG` (default `info`).
    pub log_format: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// The URL agents and people reach the hub at (used in agent commands); empty means
    /// `http://` plus the Host the request came to.
    pub public_url: String,
    /// Run an agent inside the hub for its own machine (`smon serve --no-local-agent` turns it
    /// off).
    pub local_agent: bool,
    /// Token with which agents may register themselves (`smon-agent --enroll`); empty turns
    /// enrollment off.
    #[serde(skip_serializing)]
    pub enrollment_token: Secret,
    /// Servers, agent reports, metrics history.
    pub fleet: FleetConfig,
    /// Remote tasks: the command policy.
    pub tasks: TasksConfig,
    /// Response caches of the hottest reads.
    pub cache: CacheConfig,
    /// Sessions, tokens and login protection.
    pub auth: AuthConfig,
    /// Plugins: which run, their queues and their settings.
    pub plugins: PluginsConfig,
    /// Outbound webhook requests: managed webhooks and the webhook plugin.
    pub webhooks: WebhooksConfig,
    /// API rate limits (the login limits are under `auth`).
    pub rate_limits: RateLimitsConfig,
    /// Notification channels: defaults for new channels and message templates.
    pub notifications: NotificationsConfig,
}

/// Notification channels. Each channel sets its own grouping window and rate; these are the
/// values a new channel gets when it names none.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NotificationsConfig {
    /// Events of one alert rule (or one event type) arriving within this many seconds go out
    /// as one message; 0 sends each at once.
    pub group_window_secs: u32,
    /// Messages per minute per channel, at most.
    pub rate_limit_per_minute: u32,
    /// Message templates by event type (`[notifications.templates."alert.triggered"]` with
    /// `subject` and/or `body`); see docs/NOTIFICATIONS.md for the placeholders. TOML only.
    pub templates: std::collections::BTreeMap<String, TemplateConfig>,
}

impl Default for NotificationsConfig {
    fn default() -> Self {
        Self {
            group_window_secs: 30,
            rate_limit_per_minute: 10,
            templates: Default::default(),
        }
    }
}

/// A message template override; an absent part keeps the built-in one.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TemplateConfig {
    pub subject: Option<String>,
    pub body: Option<String>,
}

/// Response caches. Writes that change an answer (server changes, status changes, new events)
/// invalidate it at once; the TTL bounds how old the metrics in a cached list can be.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// Master switch.
    pub enabled: bool,
    /// `GET /api/stats/overview`, seconds (0 turns this cache off).
    pub overview_ttl_secs: u64,
    /// `GET /api/servers`, seconds.
    pub servers_ttl_secs: u64,
    /// `GET /api/activity/recent`, seconds.
    pub activity_ttl_secs: u64,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            overview_ttl_secs: 30,
            servers_ttl_secs: 10,
            activity_ttl_secs: 15,
        }
    }
}

/// Remote tasks. The policy is a safety net against mistakes, not a sandbox: a task runs with
/// the agent's rights, and agents run none unless their own configuration allows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TasksConfig {
    /// `denylist`: refuse commands matching a `deny` pattern. `allowlist`: run only commands
    /// matching an `allow` pattern (and no `deny` pattern).
    pub policy: String,
    /// Regular expressions (case-insensitive) of commands to refuse.
    pub deny: Vec<String>,
    /// Regular expressions (case-insensitive, whole command) of commands to allow in
    /// `allowlist` mode.
    pub allow: Vec<String>,
    /// A running task with no result this long after its timeout is marked interrupted.
    pub result_grace_secs: u64,
    /// A task no agent picked up within this long fails (its server stayed offline).
    pub queued_ttl_secs: u64,
    /// Finished tasks (with their output) are deleted after this many days.
    pub retention_days: u64,
}

impl Default for TasksConfig {
    fn default() -> Self {
        Self {
            policy: "denylist".into(),
            deny: [
                // rm of /, /* or a home directory, whatever the flags
                r"\brm\s+(-\S+\s+)*(/|/\*|~/?|\$HOME/?)(\s|$)",
                // making filesystems, wiping signatures, overwriting disks
                r"\b(mkfs(\.\w+)?|wipefs|fdisk|sfdisk|parted)\b",
                r"\bdd\b.*\bof=/dev/(sd|hd|vd|xvd|nvme|mmcblk|dm-)",
                r">\s*/dev/(sd|hd|vd|xvd|nvme|mmcblk|dm-)",
                r"\bshred\b.*/dev/",
                // a fork bomb
                r":\(\)\s*\{\s*:\s*\|\s*:\s*&\s*\}\s*;\s*:",
                // stopping the machine
                r"\b(shutdown|reboot|halt|poweroff)\b",
                r"\binit\s+[06]\b",
                // opening up the whole filesystem
                r"\bchmod\s+(-\S+\s+)*0?777\s+/(\s|$)",
                r"\bchown\s+(-\S+\s+)*\S+\s+/(\s|$)",
                // dropping every cron job
                r"\bcrontab\s+-r\b",
            ]
            .map(String::from)
            .to_vec(),
            allow: Vec::new(),
            result_grace_secs: 60,
            queued_ttl_secs: 86_400,
            retention_days: 90,
        }
    }
}

/// Servers, agent reports and metrics history.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct FleetConfig {
    /// A server is offline after this many of its intervals without a report.
    pub offline_after_intervals: u32,
    /// Reports waiting for the database writer; past it agents get 503 and retry.
    pub ingest_queue: usize,
    /// Most reports the writer commits in one transaction.
    pub ingest_batch: usize,
    /// How long raw samples are kept.
    pub raw_retention_hours: u64,
    /// How long 1-minute rollups are kept.
    pub minute_retention_days: u64,
    /// How long 1-hour rollups are kept.
    pub hour_retention_days: u64,
    /// After the hub starts, servers get this long (or their offline threshold, if longer)
    /// to report again before they count as offline: agents back off while the hub is down.
    pub startup_grace_secs: u64,
    /// Sampling interval of the hub's own agent.
    pub local_agent_interval_secs: u32,
    /// Whether the hub's own agent runs tasks (like an agent's `allow_tasks`).
    pub local_agent_allow_tasks: bool,
}

impl Default for FleetConfig {
    fn default() -> Self {
        Self {
            offline_after_intervals: 3,
            ingest_queue: 4096,
            ingest_batch: 512,
            raw_retention_hours: 48,
            minute_retention_days: 30,
            hour_retention_days: 730,
            startup_grace_secs: 90,
            local_agent_interval_secs: 10,
            local_agent_allow_tasks: false,
        }
    }
}

/// API rate limits, each per minute.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitsConfig {
    /// Requests per client address to the whole API (health, readiness, metrics, login and
    /// agent reports excepted).
    pub api_per_minute: u32,
    /// Webhooks one user may create.
    pub webhook_create_per_minute: u32,
    /// Test deliveries one user may send.
    pub webhook_test_per_minute: u32,
    /// Inventory refresh requests per server.
    pub inventory_refresh_per_minute: u32,
    /// Tasks one user may create (a fleet task counts once).
    pub task_create_per_minute: u32,
    /// Proxies (CIDRs) whose `X-Forwarded-For` names the client; others' is ignored.
    pub trusted_proxies: Vec<String>,
}

impl Default for RateLimitsConfig {
    fn default() -> Self {
        Self {
            api_per_minute: 1200,
            webhook_create_per_minute: 20,
            webhook_test_per_minute: 10,
            inventory_refresh_per_minute: 10,
            task_create_per_minute: 20,
            trusted_proxies: Vec::new(),
        }
    }
}

/// Plugins. Only plugins named in `allowlist` are loaded.
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// Master switch; also read from `PLUGINS_ENABLED`.
    pub enabled: bool,
    /// Plugins to load, by name; also read from `PLUGINS_ALLOWLIST` (comma-separated).
    pub allowlist: Vec<String>,
    /// Events waiting per plugin before new ones are dropped (and counted).
    pub queue_capacity: usize,
    /// Longest a plugin may spend on one event before it counts as failed.
    pub event_timeout_secs: u64,
    /// Longest the plugins get at shutdown to finish queued events.
    pub shutdown_timeout_millis: u64,
    /// Settings per plugin name, as JSON objects; also `PLUGIN_<NAME>_CONFIG` (JSON).
    /// A name that is not a built-in picks one with `"type"`: `{"type": "exec", ...}`.
    pub config: std::collections::BTreeMap<String, serde_json::Value>,
}

impl std::fmt::Debug for PluginsConfig {
    // Plugin settings may hold secrets (a webhook's): only their names are shown.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PluginsConfig")
            .field("enabled", &self.enabled)
            .field("allowlist", &self.allowlist)
            .field("queue_capacity", &self.queue_capacity)
            .field("event_timeout_secs", &self.event_timeout_secs)
            .field("shutdown_timeout_millis", &self.shutdown_timeout_millis)
            .field("config", &self.config.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Default for PluginsConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            allowlist: Vec::new(),
            queue_capacity: 1024,
            event_timeout_secs: 10,
            shutdown_timeout_millis: 1000,
            config: Default::default(),
        }
    }
}

/// Outbound webhook requests and managed webhook delivery.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// CIDRs exempt from the SSRF guard (e.g. `10.0.0.0/8` for a receiver on the LAN).
    pub allow_cidrs: Vec<String>,
    /// Delivery workers (deliveries in progress at once, all webhooks together). 0 makes a hub
    /// that delivers nothing, leaving the queue to the other hubs on its database.
    pub workers: usize,
    /// Deliveries in progress at once to any one webhook.
    pub per_webhook_concurrency: usize,
    /// First retry delay; each further retry doubles it (with jitter) up to `retry_cap_secs`.
    pub retry_base_secs: u64,
    /// Longest delay between two attempts.
    pub retry_cap_secs: u64,
    /// A webhook failing without a single success for this long is disabled.
    pub disable_after_secs: u64,
    /// Delivery log rows older than this are pruned.
    pub delivery_retention_days: u64,
}

impl Default for WebhooksConfig {
    fn default() -> Self {
        Self {
            allow_cidrs: Vec::new(),
            workers: 16,
            per_webhook_concurrency: 4,
            retry_base_secs: 30,
            retry_cap_secs: 3600,
            disable_after_secs: 24 * 3600,
            delivery_retention_days: 30,
        }
    }
}

/// A configured secret: readable by the code that needs it, redacted from `Debug` output.
#[derive(Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    /// The secret's value.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl From<&str> for Secret {
    fn from(s: &str) -> Self {
        Secret(s.to_string())
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "<unset>"
        } else {
            "<redacted>"
        })
    }
}

/// Sessions, tokens and login brute-force protection.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// A session unused for this long expires.
    pub session_idle_secs: u64,
    /// A session expires this long after login, used or not.
    pub session_max_secs: u64,
    /// Mark the session cookie `Secure` (set this when the hub is served over HTTPS).
    pub cookie_secure: bool,
    /// Login attempts allowed per client address within `login_window_secs`.
    pub login_ip_attempts: u32,
    /// Login attempts allowed per username within `login_window_secs`.
    pub login_user_attempts: u32,
    /// Window over which the login attempt limits refill.
    pub login_window_secs: u64,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9083".into(),
            data_dir: PathBuf::from("./smon-data"),
            database_url: String::new(),
            admin_password: Secret::default(),
            secret_key: Secret::default(),
            metrics_token: Secret::default(),
            log_format: "text".into(),
            max_body_bytes: 1024 * 1024,
            public_url: String::new(),
            local_agent: true,
            enrollment_token: Secret::default(),
            fleet: FleetConfig::default(),
            tasks: TasksConfig::default(),
            cache: CacheConfig::default(),
            auth: AuthConfig::default(),
            plugins: PluginsConfig::default(),
            webhooks: WebhooksConfig::default(),
            rate_limits: RateLimitsConfig::default(),
            notifications: NotificationsConfig::default(),
        }
    }
}

impl Default for AuthConfig {
    fn default() -> Self {
        Self {
            session_idle_secs: 12 * 3600,
            session_max_secs: 7 * 24 * 3600,
            cookie_secure: false,
            login_ip_attempts: 30,
            login_user_attempts: 10,
            login_window_secs: 300,
        }
    }
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid config: {0}")]
    Invalid(String),
}

impl Config {
    /// Defaults, then the file (if any), then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        let env: HashMap<String, String> = std::env::vars().collect();
        Self::load_from(file, &env)
    }

    /// Like [`Config::load`] with an explicit environment (tests use this).
    pub fn load_from(
        file: Option<&Path>,
        env: &HashMap<String, String>,
    ) -> Result<Self, ConfigError> {
        let mut tree = toml::Value::try_from(Config::default())
            .map_err(|e| ConfigError::Invalid(e.to_string()))?;
        if let Some(path) = file {
            let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                path: path.to_owned(),
                source,
            })?;
            let from_file: toml::Value = toml::from_str(&text)
                .map_err(|e| ConfigError::Invalid(format!("{}: {e}", path.display())))?;
            merge(&mut tree, from_file);
        }
        apply_legacy_plugin_env(&mut tree, env)?;
        apply_env(&mut tree, "SMON", env)?;
        // Secret-ish keys are skipped when serialising the defaults, so read them directly.
        let mut config: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        if let Some(pw) = env.get("SMON_ADMIN_PASSWORD") {
            config.admin_password = Secret(pw.clone());
        }
        if let Some(key) = env.get("SMON_SECRET_KEY") {
            config.secret_key = Secret(key.clone());
        }
        if let Some(token) = env.get("SMON_METRICS_TOKEN") {
            config.metrics_token = Secret(token.clone());
        }
        if let Some(token) = env.get("SMON_ENROLLMENT_TOKEN") {
            config.enrollment_token = Secret(token.clone());
        }
        // Like the metrics token: a trailing newline from a file or a shell does no harm.
        config.enrollment_token = Secret(config.enrollment_token.expose().trim().to_string());
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        if self.listen.parse::<SocketAddr>().is_err() {
            return invalid(format!(
                "listen: {:?} is not an address like 127.0.0.1:9083",
                self.listen
            ));
        }
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return invalid(format!(
                "log_format: {:?} is not text or json",
                self.log_format
            ));
        }
        if !self.database_url.is_empty()
            && crate::store::Backend::of_url(&self.database_url).is_none()
        {
            return invalid(format!(
                "database_url: {:?} is neither a sqlite: nor a postgres:// URL",
                redact_url(&self.database_url)
            ));
        }
        let a = &self.auth;
        if a.session_idle_secs == 0 || a.session_max_secs == 0 || a.login_window_secs == 0 {
            return invalid("auth: durations must be at least 1 second".into());
        }
        if a.login_ip_attempts == 0 || a.login_user_attempts == 0 {
            return invalid("auth: login attempt limits must be at least 1".into());
        }
        let p = &self.plugins;
        if p.queue_capacity == 0 || p.event_timeout_secs == 0 {
            return invalid(
                "plugins: queue_capacity and event_timeout_secs must be at least 1".into(),
            );
        }
        let w = &self.webhooks;
        if w.per_webhook_concurrency == 0 || w.retry_base_secs == 0 {
            return invalid(
                "webhooks: per_webhook_concurrency and retry_base_secs must be at least 1".into(),
            );
        }
        if w.retry_cap_secs < w.retry_base_secs {
            return invalid("webhooks.retry_cap_secs: must not be below retry_base_secs".into());
        }
        for cidr in &self.webhooks.allow_cidrs {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                return invalid(format!(
                    "webhooks.allow_cidrs: {cidr:?} is not a CIDR like 10.0.0.0/8"
                ));
            }
        }
        let r = &self.rate_limits;
        if r.api_per_minute == 0
            || r.webhook_create_per_minute == 0
            || r.webhook_test_per_minute == 0
            || r.inventory_refresh_per_minute == 0
            || r.task_create_per_minute == 0
        {
            return invalid("rate_limits: every limit must be at least 1 per minute".into());
        }
        for cidr in &r.trusted_proxies {
            if cidr.parse::<ipnet::IpNet>().is_err() && cidr.parse::<std::net::IpAddr>().is_err() {
                return invalid(format!(
                    "rate_limits.trusted_proxies: {cidr:?} is not a CIDR or an address"
                ));
            }
        }
        let f = &self.fleet;
        if f.offline_after_intervals == 0 || f.ingest_queue == 0 || f.ingest_batch == 0 {
            return invalid(
                "fleet: offline_after_intervals, ingest_queue and ingest_batch must be at least 1"
                    .into(),
            );
        }
        if f.raw_retention_hours == 0 || f.minute_retention_days == 0 || f.hour_retention_days == 0
        {
            return invalid("fleet: retention periods must be at least 1".into());
        }
        if !(1..=3600).contains(&f.local_agent_interval_secs) {
            return invalid("fleet.local_agent_interval_secs: must be between 1 and 3600".into());
        }
        if !self.public_url.is_empty() {
            match url::Url::parse(&self.public_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return invalid(format!(
                        "public_url: {:?} is not an http(s) URL",
                        self.public_url
                    ));
                }
            }
        }
        let n = &self.notifications;
        if n.group_window_secs > 3600 || !(1..=600).contains(&n.rate_limit_per_minute) {
            return invalid(
                "notifications: group_window_secs must be 0 to 3600, rate_limit_per_minute 1 to 600"
                    .into(),
            );
        }
        for (event_type, t) in &n.templates {
            if crate::events::EventType::parse(event_type).is_none() {
                return invalid(format!(
                    "notifications.templates: {event_type:?} is not an event type"
                ));
            }
            for (part, text) in [("subject", &t.subject), ("body", &t.body)] {
                if let Some(text) = text {
                    if let Err(e) = crate::notifications::render::check_template(text) {
                        return invalid(format!(
                            "notifications.templates.\"{event_type}\".{part}: {e}"
                        ));
                    }
                }
            }
        }
        let t = &self.tasks;
        if !(60..=365 * 86_400).contains(&t.queued_ttl_secs)
            || !(1..=36_500).contains(&t.retention_days)
            || !(1..=86_400).contains(&t.result_grace_secs)
        {
            return invalid(
                "tasks: queued_ttl_secs must be 60 s to a year, retention_days 1 to 36500, \
                 result_grace_secs 1 to 86400"
                    .into(),
            );
        }
        if !matches!(self.tasks.policy.as_str(), "denylist" | "allowlist") {
            return invalid(format!(
                "tasks.policy: {:?} is not denylist or allowlist",
                self.tasks.policy
            ));
        }
        for (key, patterns) in [
            ("tasks.deny", &self.tasks.deny),
            ("tasks.allow", &self.tasks.allow),
        ] {
            for p in patterns {
                // Compiled as the policy compiles it: an allow pattern must match whole.
                let form = if key == "tasks.allow" {
                    format!("^(?:{p})$")
                } else {
                    p.clone()
                };
                if let Err(e) = regex::Regex::new(&form) {
                    return invalid(format!("{key}: {p:?} is not a valid pattern: {e}"));
                }
            }
        }
        let token = self.enrollment_token.expose();
        if !token.is_empty() && token.chars().count() < 16 {
            return invalid("enrollment_token: must be at least 16 characters".into());
        }
        if self.max_body_bytes < 1024 {
            return invalid("max_body_bytes: must be at least 1024".into());
        }
        Ok(())
    }

    /// The database URL actually used.
    pub fn effective_database_url(&self) -> String {
        if self.database_url.is_empty() {
            format!("sqlite://{}", self.data_dir.join("smon.db").display())
        } else {
            self.database_url.clone()
        }
    }

    /// Every key with its environment variable and default, for `smon config`.
    pub fn reference() -> Vec<(String, String, String)> {
        let tree = toml::Value::try_from(Config::default()).expect("defaults serialise");
        let mut out = Vec::new();
        collect_leaves(&tree, "", &mut out);
        out.push((
            "admin_password".into(),
            "SMON_ADMIN_PASSWORD".into(),
            "\"\"".into(),
        ));
        out.push((
            "secret_key".into(),
            "SMON_SECRET_KEY".into(),
            "\"\" (generated <data_dir>/secret.key)".into(),
        ));
        out.push((
            "metrics_token".into(),
            "SMON_METRICS_TOKEN".into(),
            "\"\"".into(),
        ));
        out.push((
            "enrollment_token".into(),
            "SMON_ENROLLMENT_TOKEN".into(),
            "\"\" (enrollment off)".into(),
        ));
        out.push((
            "plugins.config.<name>".into(),
            "PLUGIN_<NAME>_CONFIG (JSON)".into(),
            "{}".into(),
        ));
        out
    }
}

fn collect_leaves(value: &toml::Value, prefix: &str, out: &mut Vec<(String, String, String)>) {
    match value {
        toml::Value::Table(t) => {
            for (k, v) in t {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                collect_leaves(v, &key, out);
            }
        }
        leaf => out.push((
            prefix.to_string(),
            format!("SMON_{}", prefix.replace('.', "_").to_uppercase()),
            leaf.to_string(),
        )),
    }
}

/// The replaced system's plugin variables: `PLUGINS_ENABLED`, `PLUGINS_ALLOWLIST` (each unless
/// the `SMON_` form is set) and `PLUGIN_<NAME>_CONFIG` / `SMON_PLUGIN_<NAME>_CONFIG` (JSON).
fn apply_legacy_plugin_env(
    tree: &mut toml::Value,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let mut overrides: Vec<(String, String)> = Vec::new();
    for (legacy, name) in [
        ("PLUGINS_ENABLED", "SMON_PLUGINS_ENABLED"),
        ("PLUGINS_ALLOWLIST", "SMON_PLUGINS_ALLOWLIST"),
    ] {
        if let (Some(v), None) = (env.get(legacy), env.get(name)) {
            overrides.push((name.to_string(), v.clone()));
        }
    }
    if !overrides.is_empty() {
        let env: HashMap<String, String> = overrides.into_iter().collect();
        apply_env(tree, "SMON", &env)?;
    }
    let mut names: Vec<&String> = env.keys().collect();
    // SMON_ forms come after the legacy ones and so win.
    names.sort_by_key(|k| k.starts_with("SMON_"));
    for var in names {
        let Some(plugin) = var
            .strip_prefix("SMON_PLUGIN_")
            .or_else(|| var.strip_prefix("PLUGIN_"))
            .and_then(|rest| rest.strip_suffix("_CONFIG"))
            .filter(|p| !p.is_empty())
        else {
            continue;
        };
        let value: toml::Value = serde_json::from_str::<serde_json::Value>(&env[var])
            .ok()
            .filter(serde_json::Value::is_object)
            .and_then(|v| toml::Value::try_from(v).ok())
            .ok_or_else(|| {
                ConfigError::Invalid(format!(
                    "{var}: not a JSON object (null values are not allowed)"
                ))
            })?;
        let table = tree
            .get_mut("plugins")
            .and_then(|p| p.get_mut("config"))
            .and_then(toml::Value::as_table_mut)
            .expect("defaults have plugins.config");
        table.insert(plugin.to_lowercase(), value);
    }
    Ok(())
}

fn merge(base: &mut toml::Value, over: toml::Value) {
    match (base, over) {
        (toml::Value::Table(b), toml::Value::Table(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge(existing, v),
                    // Unknown keys are kept so that deserialisation names them in its error.
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// Replace each leaf of `tree` whose `SMON_…` variable is set, parsed as the leaf's type.
fn apply_env(
    tree: &mut toml::Value,
    prefix: &str,
    env: &HashMap<String, String>,
) -> Result<(), ConfigError> {
    let toml::Value::Table(table) = tree else {
        return Ok(());
    };
    for (key, value) in table.iter_mut() {
        let name = format!("{prefix}_{}", key.to_uppercase());
        if value.is_table() {
            apply_env(value, &name, env)?;
            continue;
        }
        let Some(raw) = env.get(&name) else { continue };
        let bad = |what: &str| ConfigError::Invalid(format!("{name}: {raw:?} is not {what}"));
        *value = match value {
            toml::Value::Integer(_) => {
                toml::Value::Integer(raw.trim().parse().map_err(|_| bad("an integer"))?)
            }
            toml::Value::Boolean(_) => toml::Value::Boolean(match raw.trim() {
                "true" | "1" | "yes" | "on" => true,
                "false" | "0" | "no" | "off" => false,
                _ => return Err(bad("a boolean")),
            }),
            toml::Value::Float(_) => {
                toml::Value::Float(raw.trim().parse().map_err(|_| bad("a number"))?)
            }
            toml::Value::Array(_) => toml::Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| toml::Value::String(s.to_string()))
                    .collect(),
            ),
            _ => toml::Value::String(raw.clone()),
        };
    }
    Ok(())
}

/// A database URL with any password replaced, for messages: the one before `@` and a
/// `password=` query parameter (PostgreSQL accepts both).
pub fn redact_url(url: &str) -> String {
    let url = match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_string(),
    };
    let Some((base, query)) = url.split_once('?') else {
        return url;
    };
    let query: Vec<String> = query
        .split('&')
        .map(|pair| match pair.split_once('=') {
            Some((key, _)) if key.eq_ignore_ascii_case("password") => format!("{key}=***"),
            _ => pair.to_string(),
        })
        .collect();
    format!("{base}?{}", query.join("&"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_passwords_are_redacted_wherever_the_url_has_them() {
        assert_eq!(
            redact_url("postgres://smon:s3cret@db:5432/smon?sslmode=require"),
            "postgres://smon:***@db:5432/smon?sslmode=require"
        );
        assert_eq!(
            redact_url("postgres://db/smon?user=smon&password=s3cret&sslmode=require"),
            "postgres://db/smon?user=smon&password=***&sslmode=require"
        );
        assert_eq!(
            redact_url("sqlite:///var/lib/smon.db"),
            "sqlite:///var/lib/smon.db"
        );
    }

    fn env(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn env_overrides_file_and_defaults() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smon.toml");
        std::fs::write(
            &file,
            "listen = \"0.0.0.0:1\"\n[auth]\nlogin_ip_attempts = 5\n",
        )
        .unwrap();
        let c = Config::load_from(
            Some(&file),
            &env(&[
                ("SMON_AUTH_LOGIN_IP_ATTEMPTS", "7"),
                ("SMON_AUTH_COOKIE_SECURE", "true"),
            ]),
        )
        .unwrap();
        assert_eq!(c.listen, "0.0.0.0:1");
        assert_eq!(c.auth.login_ip_attempts, 7);
        assert!(c.auth.cookie_secure);
        assert_eq!(c.auth.login_user_attempts, 10);
    }

    #[test]
    fn the_admin_password_never_shows_in_debug_output() {
        let c =
            Config::load_from(None, &env(&[("SMON_ADMIN_PASSWORD", "hunter2-hunter2")])).unwrap();
        assert_eq!(c.admin_password.expose(), "hunter2-hunter2");
        assert!(!format!("{c:?}").contains("hunter2"));
    }

    #[test]
    fn plugin_settings_come_from_the_legacy_variables_too() {
        let c = Config::load_from(
            None,
            &env(&[
                ("PLUGINS_ALLOWLIST", "jsonl, exec"),
                ("PLUGINS_ENABLED", "false"),
                ("PLUGIN_JSONL_CONFIG", r#"{"path": "/tmp/e.jsonl"}"#),
                ("SMON_WEBHOOKS_ALLOW_CIDRS", "127.0.0.1/32,10.0.0.0/8"),
            ]),
        )
        .unwrap();
        assert_eq!(c.plugins.allowlist, ["jsonl", "exec"]);
        assert!(!c.plugins.enabled);
        assert_eq!(c.plugins.config["jsonl"]["path"], "/tmp/e.jsonl");
        assert_eq!(c.webhooks.allow_cidrs.len(), 2);
        let err = Config::load_from(None, &env(&[("PLUGIN_EXEC_CONFIG", "[1]")])).unwrap_err();
        assert!(err.to_string().contains("PLUGIN_EXEC_CONFIG"), "{err}");
    }

    #[test]
    fn bad_values_name_the_key() {
        let err = Config::load_from(None, &env(&[("SMON_AUTH_LOGIN_WINDOW_SECS", "soon")]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("SMON_AUTH_LOGIN_WINDOW_SECS"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("smon.toml");
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = Config::load_from(Some(&file), &env(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("lisen"), "{err}");
    }

    #[test]
    fn reference_lists_every_key_with_its_variable() {
        let keys = Config::reference();
        assert!(
            keys.iter()
                .any(|(k, e, _)| k == "listen" && e == "SMON_LISTEN")
        );
        assert!(
            keys.iter().any(
                |(k, e, _)| k == "auth.session_idle_secs" && e == "SMON_AUTH_SESSION_IDLE_SECS"
            )
        );
        assert!(keys.iter().any(|(_, e, _)| e == "SMON_DATA_DIR"));
    }
}
