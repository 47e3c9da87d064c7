//! Notification channels: alerts and events to e-mail, Slack, Discord, Teams, Telegram, ntfy
//! and generic webhooks.
//!
//! A channel is a delivery target beside the managed webhooks (same table, queue, retries,
//! SSRF guard and delivery log). What differs is the routing (event types, minimum severity,
//! server tags, the channels an alert rule names), grouping (events of one rule or type within
//! a window become one job) and rendering (a message per kind instead of the event JSON).

pub mod channel;
pub mod render;
pub mod service;
pub mod transport;

pub use channel::{ChannelConfig, Routing};
pub use service::NotificationService;
pub use transport::Notifier;
