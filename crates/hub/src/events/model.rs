//! The event: one JSON shape for the audit log, plugins and webhook bodies.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::wire::rfc3339_millis;
use serde_json::{Map, Value};
use utoipa::ToSchema;
use uuid::Uuid;

use super::catalog::EventType;

/// How much an event matters.
/// Ordered from least to most serious.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    Info,
    Warning,
    Error,
    Critical,
}

impl Severity {
    /// The wire name.
    pub fn as_str(self) -> &'static str {
        match self {
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
            Severity::Critical => "critical",
        }
    }

    /// Parse a wire name.
    pub fn parse(s: &str) -> Option<Self> {
        [
            Severity::Info,
            Severity::Warning,
            Severity::Error,
            Severity::Critical,
        ]
        .into_iter()
        .find(|v| v.as_str() == s)
    }
}

/// Who caused an event and from where. Services receive it from the API layer.
#[derive(Debug, Clone, Default)]
pub struct Origin {
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
}

/// An event, serialised with exactly the keys and order of the documented contract.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
pub struct Event {
    #[schema(value_type = String, example = "01936f0e-7c1a-7d2e-9b8a-3c4d5e6f7a8b")]
    pub event_id: Uuid,
    pub event_type: String,
    #[serde(serialize_with = "rfc3339_millis")]
    pub timestamp: DateTime<Utc>,
    pub user_id: Option<String>,
    pub username: Option<String>,
    pub server_id: Option<String>,
    pub server_name: Option<String>,
    pub target_type: Option<String>,
    pub target_id: Option<String>,
    pub action: String,
    #[schema(value_type = Object)]
    pub meta: Map<String, Value>,
    pub ip: Option<String>,
    pub user_agent: Option<String>,
    pub severity: Severity,
}

impl Event {
    /// A new event of `kind` caused by `origin`, with the type's default severity.
    pub fn new(kind: EventType, origin: &Origin) -> Self {
        let event_type = kind.as_str();
        Event {
            event_id: Uuid::now_v7(),
            event_type: event_type.to_string(),
            timestamp: Utc::now(),
            user_id: origin.user_id.clone(),
            username: origin.username.clone(),
            server_id: None,
            server_name: None,
            target_type: None,
            target_id: None,
            action: event_type.replace('.', "_"),
            meta: Map::new(),
            ip: origin.ip.clone(),
            user_agent: origin.user_agent.clone(),
            severity: kind.severity(),
        }
    }

    /// Name the object the event is about.
    pub fn target(mut self, target_type: &str, target_id: &str) -> Self {
        self.target_type = Some(target_type.to_string());
        self.target_id = Some(target_id.to_string());
        self
    }

    /// Add one key to `meta`.
    pub fn meta(mut self, key: &str, value: impl Into<Value>) -> Self {
        self.meta.insert(key.to_string(), value.into());
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serialises_every_key_in_the_contract_order() {
        let e = Event::new(EventType::UserCreated, &Origin::default()).target("user", "u1");
        let text = serde_json::to_string(&e).unwrap();
        let keys = [
            "event_id",
            "event_type",
            "timestamp",
            "user_id",
            "username",
            "server_id",
            "server_name",
            "target_type",
            "target_id",
            "action",
            "meta",
            "ip",
            "user_agent",
            "severity",
        ];
        let mut last = 0;
        for k in keys {
            let at = text
                .find(&format!("\"{k}\":"))
                .unwrap_or_else(|| panic!("missing {k}"));
            assert!(at >= last, "{k} out of order in {text}");
            last = at;
        }
        let v: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v.as_object().unwrap().len(), keys.len());
        assert_eq!(v["action"], "user_created");
        assert!(v["timestamp"].as_str().unwrap().ends_with('Z'));
        assert_eq!(v["server_id"], Value::Null);
    }
}
