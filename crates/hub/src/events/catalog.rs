//! The event catalog: every event type the hub emits, in one list.
//!
//! A type is added here in the same change that makes the code emit it; the integration tests
//! check that every entry really appears in the event log after the action that causes it.

use serde::Serialize;
use utoipa::ToSchema;

use super::model::Severity;

macro_rules! catalog {
    ($( $variant:ident = $name:literal, $severity:ident, $description:literal; )*) => {
        /// An event type from the catalog.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub enum EventType { $( $variant, )* }

        impl EventType {
            /// Every event type, in catalog order.
            pub const ALL: &'static [EventType] = &[ $( EventType::$variant, )* ];

            /// The dot name, e.g. `user.created`.
            pub fn as_str(self) -> &'static str {
                match self { $( EventType::$variant => $name, )* }
            }

            /// The severity events of this type carry unless stated otherwise.
            pub fn severity(self) -> Severity {
                match self { $( EventType::$variant => Severity::$severity, )* }
            }

            /// One line saying when the event is emitted.
            pub fn description(self) -> &'static str {
                match self { $( EventType::$variant => $description, )* }
            }
        }
    };
}

catalog! {
    UserLogin = "user.login", Info, "A user logged in and got a session.";
    UserLoginFailed = "user.login_failed", Warning, "A login or password check was refused: unknown user, wrong password or disabled account.";
    UserLogout = "user.logout", Info, "A user logged out; the session was revoked.";
    UserCreated = "user.created", Info, "A user account was created (API or `smon user add`).";
    UserUpdated = "user.updated", Info, "A user's username, role, e-mail, password or enabled flag changed.";
    UserDeleted = "user.deleted", Warning, "A user account was deleted.";
    TokenCreated = "token.created", Info, "A personal API token was created.";
    TokenRevoked = "token.revoked", Info, "A personal API token was revoked.";
    ServerCreated = "server.created", Info, "A server was created: by a user, by an agent enrolling, or for the hub's own machine (meta.local).";
    ServerUpdated = "server.updated", Info, "A server's name, description, tags or interval changed, or its agent token was rotated (meta.changes lists what).";
    ServerDeleted = "server.deleted", Warning, "A server was deleted with its metrics history and inventory.";
    ServerOnline = "server.online", Info, "A server's agent reported after the server was offline or had never reported (meta.previous_status).";
    ServerOffline = "server.offline", Warning, "A server missed fleet.offline_after_intervals reports in a row.";
    InventoryRefresh = "inventory.refresh", Info, "A user asked a server's agent for its inventory; the agent sends it with its next report.";
    TaskCreated = "task.created", Info, "A user created a remote task for a server (meta.command, meta.timeout_seconds); a fleet task creates one per server.";
    TaskStarted = "task.started", Info, "The server's agent started a task.";
    TaskFinished = "task.finished", Info, "A task exited with code 0.";
    TaskFailed = "task.failed", Error, "A task exited with another code, could not start, was refused by the agent's policy, or got no result within its timeout (meta.error says which).";
    TaskTimeout = "task.timeout", Warning, "A task ran past its timeout and was killed with its process group.";
    TaskCancelled = "task.cancelled", Warning, "A task was cancelled: before it started, or killed by its agent on request.";
    AlertTriggered = "alert.triggered", Warning, "An alert rule fired for a server: its threshold was breached for its duration (meta: rule, metric, value, comparison, threshold, for_secs). The event's severity is the rule's.";
    AlertResolved = "alert.resolved", Info, "A firing alert resolved: the value came back past the recovery threshold, or the rule or server went (meta.resolution, meta.fired_for_secs).";
    AlertAcknowledged = "alert.acknowledged", Info, "A user acknowledged an alert.";
    AlertRuleCreated = "alert_rule.created", Info, "An alert rule was created.";
    AlertRuleUpdated = "alert_rule.updated", Info, "An alert rule was changed (meta.changes lists what).";
    AlertRuleDeleted = "alert_rule.deleted", Warning, "An alert rule was deleted; its firing alerts resolved.";
    WebhookCreated = "webhook.created", Info, "A managed webhook was created.";
    WebhookUpdated = "webhook.updated", Info, "A managed webhook was changed (meta.changes lists what), including secret rotation and enabling.";
    WebhookDeleted = "webhook.deleted", Warning, "A managed webhook was deleted with its queue and delivery log.";
    WebhookDisabled = "webhook.disabled", Error, "The hub disabled a webhook: its receiver answered 410 Gone or failed continuously for the configured period.";
    WebhookTest = "webhook.test", Info, "A test delivery was sent to one webhook (POST /api/webhooks/{id}/test); it goes to that webhook only.";
    ChannelCreated = "notification_channel.created", Info, "A notification channel was created.";
    ChannelUpdated = "notification_channel.updated", Info, "A notification channel was changed (meta.changes lists what).";
    ChannelDeleted = "notification_channel.deleted", Warning, "A notification channel was deleted with its queue and delivery log.";
    ChannelDisabled = "notification_channel.disabled", Error, "The hub disabled a notification channel: its endpoint answered 410 Gone or failed continuously for webhooks.disable_after_secs.";
    ChannelTest = "notification_channel.test", Info, "A test notification was sent to one channel (POST /api/notifications/channels/{id}/test); it goes to that channel only.";
    PluginError = "plugin.error", Error, "A plugin failed, panicked or timed out on an event, or failed to start (at most one per plugin per 10 s; meta.suppressed counts the rest).";
}

impl EventType {
    /// Look a type up by its dot name.
    pub fn parse(name: &str) -> Option<EventType> {
        Self::ALL.iter().copied().find(|t| t.as_str() == name)
    }
}

/// A catalog entry as served by `GET /api/events/types`.
#[derive(Debug, Serialize, ToSchema)]
pub struct EventTypeInfo {
    pub event_type: &'static str,
    pub severity: Severity,
    pub description: &'static str,
}

/// The whole catalog.
pub fn catalog() -> Vec<EventTypeInfo> {
    EventType::ALL
        .iter()
        .map(|t| EventTypeInfo {
            event_type: t.as_str(),
            severity: t.severity(),
            description: t.description(),
        })
        .collect()
}
