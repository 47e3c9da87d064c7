//! The store: SQL behind traits named by what they hold, one implementation per backend.
//!
//! Every method that changes state takes the [`Event`] describing the change and writes it in
//! the same transaction, so the event log never misses or invents a change.

pub mod sqlite;

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::Notify;

use crate::auth::roles::Role;
use crate::error::Result;
use crate::events::{Event, EventFilter};

/// A user row.
#[derive(Clone)]
pub struct UserRecord {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub enabled: bool,
    pub password_hash: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

impl std::fmt::Debug for UserRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserRecord")
            .field("id", &self.id)
            .field("username", &self.username)
            .field("role", &self.role)
            .field("enabled", &self.enabled)
            .field("password_hash", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// What a token is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TokenKind {
    /// A login session (cookie or bearer): idle and absolute expiry.
    Session,
    /// A personal API token for automation: optional absolute expiry only.
    Personal,
}

impl TokenKind {
    /// The database name.
    pub fn as_str(self) -> &'static str {
        match self {
            TokenKind::Session => "session",
            TokenKind::Personal => "personal",
        }
    }
}

/// A session or personal token row; only the token's hash is kept.
#[derive(Debug, Clone)]
pub struct TokenRecord {
    pub id: String,
    pub user_id: String,
    pub kind: TokenKind,
    pub name: Option<String>,
    pub token_hash: String,
    pub created_at: DateTime<Utc>,
    pub last_used_at: DateTime<Utc>,
    pub expires_at: Option<DateTime<Utc>>,
}

/// Users.
#[async_trait]
pub trait UserStore: Send + Sync {
    /// How many users exist.
    async fn count_users(&self) -> Result<u64>;
    /// Insert a user; `Conflict` when the username is taken.
    async fn insert_user(&self, user: &UserRecord, event: &Event) -> Result<()>;
    /// One user by id.
    async fn user_by_id(&self, id: &str) -> Result<Option<UserRecord>>;
    /// One user by username.
    async fn user_by_username(&self, username: &str) -> Result<Option<UserRecord>>;
    /// All users, by username.
    async fn list_users(&self) -> Result<Vec<UserRecord>>;
    /// Replace a user's fields. With `revoke_sessions` the user's login sessions go too.
    /// `Conflict` when no enabled admin would remain, or the new username is taken.
    async fn update_user(
        &self,
        user: &UserRecord,
        revoke_sessions: bool,
        event: &Event,
    ) -> Result<()>;
    /// Delete a user and their tokens; `NotFound`, or `Conflict` for the last enabled admin.
    async fn delete_user(&self, id: &str, event: &Event) -> Result<()>;
}

/// Login sessions and personal tokens.
#[async_trait]
pub trait TokenStore: Send + Sync {
    /// Store a new token. A session also stamps the user's `last_login_at`.
    async fn insert_token(&self, token: &TokenRecord, event: &Event) -> Result<()>;
    /// The token with this hash and its (enabled) owner.
    async fn token_with_owner(&self, token_hash: &str)
    -> Result<Option<(TokenRecord, UserRecord)>>;
    /// Record that a token was used.
    async fn touch_token(&self, id: &str, at: DateTime<Utc>) -> Result<()>;
    /// A user's tokens of one kind, newest first.
    async fn list_tokens(&self, user_id: &str, kind: TokenKind) -> Result<Vec<TokenRecord>>;
    /// Delete one of a user's tokens; false when it did not exist.
    async fn delete_token(&self, user_id: &str, token_id: &str, event: &Event) -> Result<bool>;
    /// Delete a token found expired while authenticating (no event: nobody acted).
    async fn delete_expired_token(&self, token_id: &str) -> Result<()>;
    /// Delete every token past its absolute expiry and every session idle since `idle_cutoff`.
    async fn purge_expired_tokens(
        &self,
        now: DateTime<Utc>,
        idle_cutoff: DateTime<Utc>,
    ) -> Result<u64>;
}

/// The event log.
#[async_trait]
pub trait EventStore: Send + Sync {
    /// Append an event that accompanies no other change (a failed login).
    async fn append_event(&self, event: &Event) -> Result<()>;
    /// Events matching the filter, newest first, and how many match in all.
    async fn query_events(&self, filter: &EventFilter) -> Result<(Vec<Event>, u64)>;
    /// Up to `limit` events not yet dispatched with a position after `after_seq`, oldest first.
    async fn undispatched_events(&self, after_seq: i64, limit: u32) -> Result<Vec<(i64, Event)>>;
    /// Mark every undispatched event up to and including `up_to_seq` as dispatched.
    async fn mark_dispatched(&self, up_to_seq: i64, at: DateTime<Utc>) -> Result<u64>;
    /// Notified after every commit that wrote an event, so the dispatcher need not poll hard.
    fn event_signal(&self) -> Arc<Notify>;
}

/// A whole backend.
#[async_trait]
pub trait Store: UserStore + TokenStore + EventStore {
    /// Prove the database answers a read and accepts a write.
    async fn check_ready(&self) -> Result<()>;
    /// Close every connection, finishing in-flight statements.
    async fn close(&self);
}
