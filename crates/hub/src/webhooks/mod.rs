//! Outbound webhooks: the SSRF guard, signatures and single delivery attempts. The webhook
//! plugin uses them today; managed webhooks will reuse the same code.

pub mod delivery;
pub mod send;
pub mod service;
pub mod signing;
pub mod ssrf;
