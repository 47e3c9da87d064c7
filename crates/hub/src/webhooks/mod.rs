//! Outbound webhooks: the SSRF guard, signatures and single delivery attempts. The webhook
//! plugin and managed webhooks share them; managed webhooks add the service and workers.

pub mod delivery;
pub mod send;
pub mod service;
pub mod signing;
pub mod ssrf;
