//! The page frame: head, navigation, theme switch, and formatting helpers shared by pages.

use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};

use super::Csrf;
use crate::auth::Caller;
use crate::auth::roles::Permission;

/// What the navigation shows: who is logged in, and the pages their role may open.
pub struct Nav {
    pub username: String,
    pub role: &'static str,
    pub links: Vec<(&'static str, &'static str)>,
}

/// Every page of the navigation with the permission it needs.
const LINKS: &[(&str, &str, Permission)] = &[
    ("/", "Fleet", Permission::ReadFleet),
    ("/alerts", "Alerts", Permission::ReadFleet),
    ("/tasks", "Tasks", Permission::ReadFleet),
    ("/events", "Events", Permission::ReadDashboard),
    ("/settings/webhooks", "Webhooks", Permission::ManageWebhooks),
    (
        "/settings/notifications",
        "Notifications",
        Permission::ManageNotifications,
    ),
    ("/settings/agents", "Agents", Permission::ManageServers),
    ("/settings/users", "Users", Permission::ManageUsers),
    ("/settings/plugins", "Plugins", Permission::ManagePlugins),
];

impl Nav {
    /// The navigation for `caller`.
    pub fn of(caller: &Caller) -> Nav {
        Nav {
            username: caller.username.clone(),
            role: caller.role.as_str(),
            links: LINKS
                .iter()
                .filter(|(_, _, p)| caller.role.allows(*p))
                .map(|(href, label, _)| (*href, *label))
                .collect(),
        }
    }
}

fn head(title: &str) -> Markup {
    html! {
        head {
            meta charset="utf-8";
            meta name="viewport" content="width=device-width, initial-scale=1";
            meta name="color-scheme" content="light dark";
            // No icon to fetch (and no 404 for one).
            link rel="icon" href="data:,";
            title { (title) " · Server Monitor" }
            link rel="stylesheet" href="/ui/app.css";
            script src="/ui/app.js" defer {}
        }
    }
}

/// A page without navigation (login, errors before login).
pub fn bare(title: &str, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body.bare {
                main #main { (body) }
            }
        }
    }
}

/// A page with the navigation bar.
pub fn page(title: &str, nav: &Nav, csrf: &Csrf, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            (head(title))
            body {
                a.skip href="#main" { "Skip to content" }
                header.topbar {
                    a.brand href="/" { "Server Monitor" }
                    nav aria-label="Main" {
                        @for (href, label) in &nav.links { a href=(href) { (label) } }
                    }
                    div.who {
                        button.theme type="button" data-theme-toggle { "Theme" }
                        span { (nav.username) " (" (nav.role) ")" }
                        form method="post" action="/logout" {
                            (csrf.field())
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main #main { (body) }
            }
        }
    }
}

/// `3 s ago`, `5 min ago`, with the exact time as a tooltip.
pub fn ago(at: Option<DateTime<Utc>>) -> Markup {
    match at {
        None => html! { span.muted { "never" } },
        Some(at) => {
            let secs = (Utc::now() - at).num_seconds().max(0);
            let text = match secs {
                0..60 => format!("{secs} s ago"),
                60..3600 => format!("{} min ago", secs / 60),
                3600..86_400 => format!("{} h ago", secs / 3600),
                _ => format!("{} d ago", secs / 86_400),
            };
            html! { time datetime=(at.to_rfc3339()) title=(at.format("%Y-%m-%d %H:%M:%S UTC")) { (text) } }
        }
    }
}

/// A percentage with one decimal, or a dash.
pub fn percent(v: Option<f64>) -> Markup {
    match v {
        Some(v) => html! { (format!("{v:.1} %")) },
        None => html! { span.muted { "–" } },
    }
}

/// Bytes per second in binary units.
pub fn rate(v: f64) -> String {
    let units = ["B/s", "KiB/s", "MiB/s", "GiB/s"];
    let (mut v, mut unit) = (v, 0);
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", units[unit])
}

/// Bytes in binary units.
pub fn bytes(v: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let (mut v, mut unit) = (v as f64, 0);
    while v >= 1024.0 && unit + 1 < units.len() {
        v /= 1024.0;
        unit += 1;
    }
    format!("{v:.1} {}", units[unit])
}

/// A status badge.
pub fn status(status: &str) -> Markup {
    html! { span class={ "badge " (status) } { (status) } }
}
