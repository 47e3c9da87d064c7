//! Integration tests of the hub over real HTTP, one binary for the crate.

mod common;

mod alerts;
mod auth;
mod browser;
mod cache;
mod errors;
mod events;
mod fleet;
mod lifecycle;
mod metrics;
mod notifications;
mod plugins;
mod ratelimits;
mod roles;
mod scaleout;
mod tasks;
mod ui;
mod users;
mod webhooks;
