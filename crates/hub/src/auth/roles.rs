//! Roles and the permission matrix: the one place that says who may do what.

use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

/// A user's role.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Everything, including users, webhooks and plugins.
    Admin,
    /// Servers, tasks and alerts.
    Operator,
    /// Read-only.
    Viewer,
    /// Read-only plus the audit log.
    Auditor,
}

impl Role {
    /// Every role.
    pub const ALL: [Role; 4] = [Role::Admin, Role::Operator, Role::Viewer, Role::Auditor];

    /// The wire and database name.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Admin => "admin",
            Role::Operator => "operator",
            Role::Viewer => "viewer",
            Role::Auditor => "auditor",
        }
    }

    /// Parse a wire or database name.
    pub fn parse(s: &str) -> Option<Role> {
        Self::ALL.into_iter().find(|r| r.as_str() == s)
    }

    /// Whether this role holds `permission`.
    pub fn allows(self, permission: Permission) -> bool {
        permission.roles().contains(&self)
    }
}

/// Something a route requires. Each route names exactly one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Permission {
    /// Read the dashboard: recent activity, the event catalog.
    ReadDashboard,
    /// Manage one's own account: password, personal API tokens.
    ManageOwnAccount,
    /// Read the full audit log with filters.
    ReadAuditLog,
    /// List, create, change and delete users.
    ManageUsers,
    /// See plugins and their counters.
    ManagePlugins,
    /// Create, change, test and delete managed webhooks; read their delivery logs.
    ManageWebhooks,
    /// Create, change, test and delete notification channels; read their delivery logs (they
    /// hold chat tokens and SMTP passwords, like webhooks hold secrets).
    ManageNotifications,
    /// Read `GET /api/metrics` (also open to the configured metrics token).
    ReadMetrics,
    /// Read servers, their metrics history, inventory and the fleet overview.
    ReadFleet,
    /// Create, change and delete servers, rotate agent tokens, ask for inventory.
    ManageServers,
    /// Run and cancel remote tasks.
    RunTasks,
    /// Create, change and delete alert rules; acknowledge alerts.
    ManageAlerts,
}

impl Permission {
    /// The matrix: which roles hold this permission.
    pub fn roles(self) -> &'static [Role] {
        use Role::*;
        match self {
            Permission::ReadDashboard | Permission::ManageOwnAccount | Permission::ReadFleet => {
                &[Admin, Operator, Viewer, Auditor]
            }
            Permission::ReadAuditLog => &[Admin, Auditor],
            Permission::ManageServers | Permission::RunTasks | Permission::ManageAlerts => {
                &[Admin, Operator]
            }
            Permission::ManageUsers
            | Permission::ManagePlugins
            | Permission::ManageWebhooks
            | Permission::ManageNotifications
            | Permission::ReadMetrics => &[Admin],
        }
    }

    /// A phrase for the 403 message.
    pub fn describe(self) -> &'static str {
        match self {
            Permission::ReadDashboard => "read the dashboard",
            Permission::ManageOwnAccount => "manage this account",
            Permission::ReadAuditLog => "read the audit log",
            Permission::ManageUsers => "manage users",
            Permission::ManagePlugins => "manage plugins",
            Permission::ManageWebhooks => "manage webhooks",
            Permission::ManageNotifications => "manage notification channels",
            Permission::ReadMetrics => "read metrics",
            Permission::ReadFleet => "read servers",
            Permission::ManageServers => "manage servers",
            Permission::RunTasks => "run tasks",
            Permission::ManageAlerts => "manage alerts",
        }
    }
}
