//! User accounts: creation, changes, deletion and the first admin.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::roles::Role;
use crate::auth::{AuthService, Caller, password, token};
use crate::error::{Error, Result};
use crate::events::{Event, EventType, Origin};
use crate::store::{Store, UserRecord};
use crate::wire::{opt_rfc3339_millis, rfc3339_millis};

/// A user as the API shows it (never the password hash).
#[derive(Debug, Serialize, ToSchema)]
pub struct UserView {
    pub id: String,
    pub username: String,
    pub email: Option<String>,
    pub role: Role,
    pub enabled: bool,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub created_at: DateTime<Utc>,
    #[serde(serialize_with = "rfc3339_millis")]
    #[schema(value_type = String, format = DateTime)]
    pub updated_at: DateTime<Utc>,
    #[serde(serialize_with = "opt_rfc3339_millis")]
    #[schema(value_type = Option<String>, format = DateTime)]
    pub last_login_at: Option<DateTime<Utc>>,
}

impl From<UserRecord> for UserView {
    fn from(u: UserRecord) -> Self {
        UserView {
            id: u.id,
            username: u.username,
            email: u.email,
            role: u.role,
            enabled: u.enabled,
            created_at: u.created_at,
            updated_at: u.updated_at,
            last_login_at: u.last_login_at,
        }
    }
}

/// Fields of a new user.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct NewUser {
    pub username: String,
    pub password: String,
    pub role: Role,
    #[serde(default)]
    pub email: Option<String>,
    #[serde(default = "yes")]
    pub enabled: bool,
}

fn yes() -> bool {
    true
}

/// A partial update: absent fields stay as they are; `"email": null` clears the e-mail.
#[derive(Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct UserPatch {
    pub username: Option<String>,
    #[serde(default, deserialize_with = "crate::wire::present")]
    #[schema(value_type = Option<String>)]
    pub email: Option<Option<String>>,
    pub role: Option<Role>,
    pub enabled: Option<bool>,
    pub password: Option<String>,
}

/// What first start did about the initial admin.
pub enum FirstAdmin {
    /// Users already existed.
    AlreadySetUp,
    /// `admin` was created; `generated` says whether the password was made up here.
    Created { password: String, generated: bool },
}

/// User management.
#[derive(Clone)]
pub struct UserService {
    store: Arc<dyn Store>,
    auth: AuthService,
}

/// Usernames are compared without case: they are stored and looked up in lower case.
pub fn normalize_username(name: &str) -> String {
    name.trim().to_ascii_lowercase()
}

fn validate_username(name: &str) -> Result<()> {
    let ok_len = (1..=64).contains(&name.len());
    let ok_chars = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    let ok_start = name
        .chars()
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric());
    if ok_len && ok_chars && ok_start {
        Ok(())
    } else {
        Err(Error::invalid(
            "username",
            "must be 1 to 64 characters of letters, digits, '.', '_' or '-', starting with a letter or digit",
        ))
    }
}

fn normalize_email(email: Option<String>) -> Result<Option<String>> {
    let Some(email) = email
        .map(|e| e.trim().to_string())
        .filter(|e| !e.is_empty())
    else {
        return Ok(None);
    };
    let valid = email.len() <= 254
        && !email.chars().any(char::is_whitespace)
        && email.split_once('@').is_some_and(|(local, domain)| {
            !local.is_empty() && domain.contains('.') && !domain.contains('@')
        });
    if valid {
        Ok(Some(email))
    } else {
        Err(Error::invalid("email", "is not an e-mail address"))
    }
}

impl UserService {
    /// A service over `store`, confirming passwords through `auth`.
    pub fn new(store: Arc<dyn Store>, auth: AuthService) -> Self {
        Self { store, auth }
    }

    /// On an empty database, create `admin` with `password` or a random one.
    pub async fn ensure_first_admin(&self, password: Option<&str>) -> Result<FirstAdmin> {
        if self.store.count_users().await? > 0 {
            return Ok(FirstAdmin::AlreadySetUp);
        }
        let (password, generated) = match password.filter(|p| !p.is_empty()) {
            Some(p) => {
                password::validate("SMON_ADMIN_PASSWORD", p)?;
                (p.to_string(), false)
            }
            None => (token::random_password(), true),
        };
        let origin = Origin {
            user_agent: Some("smon first start".into()),
            ..Origin::default()
        };
        let new = NewUser {
            username: "admin".into(),
            password: password.clone(),
            role: Role::Admin,
            email: None,
            enabled: true,
        };
        self.create(&origin, new).await?;
        Ok(FirstAdmin::Created {
            password,
            generated,
        })
    }

    /// Every user.
    pub async fn list(&self) -> Result<Vec<UserRecord>> {
        self.store.list_users().await
    }

    /// One user by id.
    pub async fn get(&self, id: &str) -> Result<UserRecord> {
        self.store
            .user_by_id(id)
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {id}")))
    }

    /// One user by username.
    pub async fn get_by_username(&self, username: &str) -> Result<UserRecord> {
        self.store
            .user_by_username(&normalize_username(username))
            .await?
            .ok_or_else(|| Error::NotFound(format!("user {username:?}")))
    }

    /// Create a user.
    pub async fn create(&self, origin: &Origin, new: NewUser) -> Result<UserRecord> {
        let username = normalize_username(&new.username);
        validate_username(&username)?;
        password::validate("password", &new.password)?;
        let email = normalize_email(new.email)?;
        let now = Utc::now();
        let user = UserRecord {
            id: Uuid::now_v7().to_string(),
            username,
            email,
            role: new.role,
            enabled: new.enabled,
            password_hash: password::hash(&new.password).await?,
            created_at: now,
            updated_at: now,
            last_login_at: None,
        };
        let event = Event::new(EventType::UserCreated, origin)
            .target("user", &user.id)
            .meta("new_username", user.username.clone())
            .meta("role", user.role.as_str());
        self.store.insert_user(&user, &event).await?;
        Ok(user)
    }

    /// Apply a partial update. Changing the password or disabling ends the user's sessions.
    pub async fn update(&self, origin: &Origin, id: &str, patch: UserPatch) -> Result<UserRecord> {
        let mut user = self.get(id).await?;
        let mut changes: Vec<&str> = Vec::new();
        if let Some(username) = patch.username {
            let username = normalize_username(&username);
            validate_username(&username)?;
            if username != user.username {
                user.username = username;
                changes.push("username");
            }
        }
        if let Some(email) = patch.email {
            let email = normalize_email(email)?;
            if email != user.email {
                user.email = email;
                changes.push("email");
            }
        }
        let old_role = user.role;
        if let Some(role) = patch.role.filter(|r| *r != user.role) {
            user.role = role;
            changes.push("role");
        }
        let mut revoke_sessions = false;
        if let Some(enabled) = patch.enabled.filter(|e| *e != user.enabled) {
            user.enabled = enabled;
            revoke_sessions |= !enabled;
            changes.push("enabled");
        }
        if let Some(pw) = patch.password {
            password::validate("password", &pw)?;
            user.password_hash = password::hash(&pw).await?;
            revoke_sessions = true;
            changes.push("password");
        }
        if changes.is_empty() {
            return Ok(user);
        }
        user.updated_at = Utc::now();
        let mut event = Event::new(EventType::UserUpdated, origin)
            .target("user", &user.id)
            .meta("changes", changes.clone())
            .meta("target_username", user.username.clone());
        if changes.contains(&"role") {
            event = event
                .meta("old_role", old_role.as_str())
                .meta("new_role", user.role.as_str());
        }
        self.store
            .update_user(&user, revoke_sessions, &event)
            .await?;
        // A role, a disabled account or ended sessions must count at once on this hub.
        self.auth.forget_tokens();
        Ok(user)
    }

    /// Change the caller's own password after checking the current one.
    pub async fn change_own_password(
        &self,
        caller: &Caller,
        current: &str,
        new: &str,
    ) -> Result<()> {
        password::validate("new_password", new)?;
        self.auth.confirm_password(caller, current).await?;
        let patch = UserPatch {
            password: Some(new.to_string()),
            ..UserPatch::default()
        };
        self.update(&caller.origin, &caller.user_id, patch).await?;
        Ok(())
    }

    /// Delete a user.
    pub async fn delete(&self, origin: &Origin, id: &str) -> Result<()> {
        let user = self.get(id).await?;
        let event = Event::new(EventType::UserDeleted, origin)
            .target("user", id)
            .meta("target_username", user.username);
        self.store.delete_user(id, &event).await?;
        self.auth.forget_tokens();
        Ok(())
    }
}
