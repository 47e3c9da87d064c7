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
    /// Log output: `text` or `json`. The level comes from `RUST_LOG` (default `info`).
    pub log_format: String,
    /// Largest accepted request body, in bytes.
    pub max_body_bytes: usize,
    /// Sessions, tokens and login protection.
    pub auth: AuthConfig,
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
            log_format: "text".into(),
            max_body_bytes: 1024 * 1024,
            auth: AuthConfig::default(),
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
        apply_env(&mut tree, "SMON", env)?;
        // Secret-ish keys are skipped when serialising the defaults, so read them directly.
        let mut config: Config = tree
            .try_into()
            .map_err(|e: toml::de::Error| ConfigError::Invalid(e.message().to_string()))?;
        if let Some(pw) = env.get("SMON_ADMIN_PASSWORD") {
            config.admin_password = Secret(pw.clone());
        }
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
        if !self.database_url.is_empty() && !self.database_url.starts_with("sqlite:") {
            return invalid(format!(
                "database_url: only sqlite: URLs are supported by this build, got {:?}",
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

/// A database URL with any password replaced, for messages.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            let user = creds.split(':').next().unwrap_or("");
            format!("{}://{}:***@{}", &url[..scheme_end], user, &url[at + 1..])
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
