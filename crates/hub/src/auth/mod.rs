//! Authentication: logins, sessions, personal API tokens and the caller identity.

pub mod limiter;
pub mod password;
pub mod roles;
pub mod token;

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::OnceCell;
use uuid::Uuid;

use crate::config::AuthConfig;
use crate::error::{Error, Result};
use crate::events::{Event, EventType, Origin};
use crate::store::{Store, TokenKind, TokenRecord, UserRecord};
use limiter::LoginLimiter;
use roles::{Permission, Role};

/// Who is making a request, established from a session or personal token.
#[derive(Debug, Clone)]
pub struct Caller {
    pub user_id: String,
    pub username: String,
    pub role: Role,
    pub token_id: String,
    pub token_kind: TokenKind,
    /// Where the request came from, for events.
    pub origin: Origin,
}

impl Caller {
    /// `Forbidden` unless the caller's role holds `permission`.
    pub fn require(&self, permission: Permission) -> Result<()> {
        if self.role.allows(permission) {
            Ok(())
        } else {
            Err(Error::Forbidden(format!(
                "role {} may not {}",
                self.role.as_str(),
                permission.describe()
            )))
        }
    }
}

/// A successful login.
pub struct LoginOutcome {
    pub token: String,
    pub user: UserRecord,
    pub expires_at: DateTime<Utc>,
}

/// A newly created personal token; `token` is shown once.
pub struct NewPersonalToken {
    pub token: String,
    pub record: TokenRecord,
}

const BAD_CREDENTIALS: &str = "invalid username or password";
const BAD_TOKEN: &str = "invalid or expired token";

/// Logins, logouts and token checks.
#[derive(Clone)]
pub struct AuthService {
    store: Arc<dyn Store>,
    cfg: AuthConfig,
    limiter: Arc<LoginLimiter>,
    /// Hash checked for unknown usernames so that they take as long as wrong passwords.
    decoy_hash: Arc<OnceCell<String>>,
    /// Tokens recently checked, by digest, with their owner (see [`Self::with_token_cache`]).
    recent: Option<moka::sync::Cache<String, (TokenRecord, UserRecord)>>,
    /// Bumped by [`Self::forget_tokens`]: a check that read the database before a change and
    /// finished after it must not put the old answer back.
    forgotten: Arc<std::sync::atomic::AtomicU64>,
}

impl AuthService {
    /// A service over `store` configured by `cfg`.
    pub fn new(store: Arc<dyn Store>, cfg: AuthConfig) -> Self {
        let limiter = Arc::new(LoginLimiter::new(&cfg));
        Self {
            store,
            cfg,
            limiter,
            decoy_hash: Arc::new(OnceCell::new()),
            recent: None,
            forgotten: Arc::default(),
        }
    }

    /// Keep checked tokens for `ttl`, so that a client's requests do not each read the
    /// database: on PostgreSQL that read is a round trip, and at thousands of API requests a
    /// second it took the database's CPU from report ingestion. A change through this hub
    /// (logout, revocation, a user edited or deleted) forgets them all at once; one through
    /// another hub is seen within `ttl`, as other hubs' changes are (cluster sync).
    pub fn with_token_cache(mut self, ttl: Duration) -> Self {
        self.recent = Some(
            moka::sync::Cache::builder()
                .max_capacity(100_000)
                .time_to_live(ttl)
                .build(),
        );
        self
    }

    /// Forget every cached token check: after a change that can end sessions or tokens.
    pub fn forget_tokens(&self) {
        if let Some(recent) = &self.recent {
            self.forgotten
                .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
            recent.invalidate_all();
        }
    }

    /// Check credentials and open a session. Failures are recorded as `user.login_failed`.
    pub async fn login(
        &self,
        username: &str,
        password: &str,
        origin: &Origin,
    ) -> Result<LoginOutcome> {
        if username.trim().is_empty() {
            return Err(Error::invalid("username", "must not be empty"));
        }
        if password.is_empty() {
            return Err(Error::invalid("password", "must not be empty"));
        }
        if password.len() > password::MAX_LEN * 4 {
            return Err(Error::invalid("password", "is too long"));
        }
        let ip = origin.ip.as_deref().unwrap_or("unknown");
        if let Err(retry_after) = self.limiter.check(ip, username) {
            // Not written to the event log: a flood of refused attempts must not flood the log.
            tracing::warn!(%ip, username, "login rate limit reached");
            return Err(Error::RateLimited {
                retry_after,
                limit: None,
            });
        }

        let user = self
            .store
            .user_by_username(&crate::users::normalize_username(username))
            .await?;
        let Some(user) = user else {
            let decoy = self
                .decoy_hash
                .get_or_try_init(|| password::hash("decoy password"))
                .await?;
            password::verify(password, decoy).await?;
            return Err(self
                .login_failed(username, None, "unknown_user", origin)
                .await?);
        };
        if !password::verify(password, &user.password_hash).await? {
            return Err(self
                .login_failed(username, Some(&user.id), "bad_password", origin)
                .await?);
        }
        if !user.enabled {
            self.login_failed(username, Some(&user.id), "disabled", origin)
                .await?;
            return Err(Error::Forbidden("this account is disabled".into()));
        }

        let now = Utc::now();
        let expires_at = now + secs(self.cfg.session_max_secs);
        let token = token::generate(token::SESSION_PREFIX);
        let record = TokenRecord {
            id: Uuid::now_v7().to_string(),
            user_id: user.id.clone(),
            kind: TokenKind::Session,
            name: None,
            token_hash: token::digest(&token),
            created_at: now,
            last_used_at: now,
            expires_at: Some(expires_at),
        };
        let origin = Origin {
            user_id: Some(user.id.clone()),
            username: Some(user.username.clone()),
            ..origin.clone()
        };
        let event = Event::new(EventType::UserLogin, &origin)
            .target("user", &user.id)
            .meta("session_id", record.id.clone());
        self.store.insert_token(&record, &event).await?;
        let user = UserRecord {
            last_login_at: Some(now),
            ..user
        };
        Ok(LoginOutcome {
            token,
            user,
            expires_at,
        })
    }

    async fn login_failed(
        &self,
        username: &str,
        user_id: Option<&str>,
        reason: &str,
        origin: &Origin,
    ) -> Result<Error> {
        let mut event = Event::new(EventType::UserLoginFailed, origin).meta("reason", reason);
        event.username = Some(
            crate::users::normalize_username(username)
                .chars()
                .take(64)
                .collect(),
        );
        event.user_id = user_id.map(str::to_string);
        if let Some(id) = user_id {
            event = event.target("user", id);
        }
        self.store.append_event(&event).await?;
        Ok(Error::Unauthorized(BAD_CREDENTIALS.into()))
    }

    /// Check the caller's current password before a sensitive change. Limited and recorded
    /// like a login, so a stolen session cannot be used to guess the password.
    pub async fn confirm_password(&self, caller: &Caller, password: &str) -> Result<()> {
        if password.len() > password::MAX_LEN * 4 {
            return Err(Error::invalid("current_password", "is too long"));
        }
        let ip = caller.origin.ip.as_deref().unwrap_or("unknown");
        if let Err(retry_after) = self.limiter.check(ip, &caller.username) {
            return Err(Error::RateLimited {
                retry_after,
                limit: None,
            });
        }
        let user = self
            .store
            .user_by_id(&caller.user_id)
            .await?
            .ok_or_else(|| Error::Unauthorized(BAD_TOKEN.into()))?;
        if password::verify(password, &user.password_hash).await? {
            return Ok(());
        }
        self.login_failed(
            &user.username,
            Some(&user.id),
            "bad_current_password",
            &caller.origin,
        )
        .await?;
        Err(Error::invalid(
            "current_password",
            "is not this account's password",
        ))
    }

    /// The caller a bearer or cookie token belongs to; expired tokens are removed.
    pub async fn authenticate(&self, token: &str, origin: Origin) -> Result<Caller> {
        let unauthorized = || Error::Unauthorized(BAD_TOKEN.into());
        if !token.starts_with(token::SESSION_PREFIX) && !token.starts_with(token::PERSONAL_PREFIX) {
            return Err(unauthorized());
        }
        let digest = token::digest(token);
        let generation = self.forgotten.load(std::sync::atomic::Ordering::Acquire);
        let cached = self.recent.as_ref().and_then(|c| c.get(&digest));
        let from_cache = cached.is_some();
        let (mut record, user) = match cached {
            Some(hit) => hit,
            None => match self.store.token_with_owner(&digest).await? {
                Some(found) => found,
                None => return Err(unauthorized()),
            },
        };
        let now = Utc::now();
        let idle = secs(self.cfg.session_idle_secs);
        let expired = record.expires_at.is_some_and(|at| at <= now)
            || (record.kind == TokenKind::Session && record.last_used_at + idle <= now);
        if expired {
            if let Some(recent) = &self.recent {
                recent.invalidate(&digest);
            }
            self.store.delete_expired_token(&record.id).await?;
            return Err(unauthorized());
        }
        // Recording every use would put a write on every request; a coarse stamp is enough to
        // enforce the idle timeout.
        let stamp_every = (idle / 4).min(chrono::Duration::seconds(60));
        let touch = now - record.last_used_at >= stamp_every;
        if touch {
            self.store.touch_token(&record.id, now).await?;
            record.last_used_at = now;
        }
        // Kept from the database read only, never renewed by use: the entry's age bounds how
        // long a change made through another hub goes unseen.
        if let Some(recent) = &self.recent {
            let unchanged = self.forgotten.load(std::sync::atomic::Ordering::Acquire) == generation;
            if !from_cache && unchanged {
                recent.insert(digest, (record.clone(), user.clone()));
            } else if touch {
                recent.invalidate(&digest);
            }
        }
        Ok(Caller {
            origin: Origin {
                user_id: Some(user.id.clone()),
                username: Some(user.username.clone()),
                ..origin
            },
            user_id: user.id,
            username: user.username,
            role: user.role,
            token_id: record.id,
            token_kind: record.kind,
        })
    }

    /// End the caller's login session.
    pub async fn logout(&self, caller: &Caller) -> Result<()> {
        if caller.token_kind != TokenKind::Session {
            return Err(Error::BadRequest(
                "logout ends login sessions; revoke a personal token with DELETE /api/users/me/tokens/{id}"
                    .into(),
            ));
        }
        let event = Event::new(EventType::UserLogout, &caller.origin)
            .target("user", &caller.user_id)
            .meta("session_id", caller.token_id.clone());
        self.store
            .delete_token(&caller.user_id, &caller.token_id, &event)
            .await?;
        self.forget_tokens();
        Ok(())
    }

    /// Create a personal API token for the caller.
    pub async fn create_personal_token(
        &self,
        caller: &Caller,
        name: &str,
        expires_in_days: Option<u32>,
    ) -> Result<NewPersonalToken> {
        let name = name.trim();
        if name.is_empty() || name.chars().count() > 100 {
            return Err(Error::invalid("name", "must be 1 to 100 characters"));
        }
        if let Some(days) = expires_in_days {
            if !(1..=3650).contains(&days) {
                return Err(Error::invalid(
                    "expires_in_days",
                    "must be between 1 and 3650",
                ));
            }
        }
        let now = Utc::now();
        let token = token::generate(token::PERSONAL_PREFIX);
        let record = TokenRecord {
            id: Uuid::now_v7().to_string(),
            user_id: caller.user_id.clone(),
            kind: TokenKind::Personal,
            name: Some(name.to_string()),
            token_hash: token::digest(&token),
            created_at: now,
            last_used_at: now,
            expires_at: expires_in_days.map(|d| now + chrono::Duration::days(i64::from(d))),
        };
        let event = Event::new(EventType::TokenCreated, &caller.origin)
            .target("token", &record.id)
            .meta("name", name);
        self.store.insert_token(&record, &event).await?;
        Ok(NewPersonalToken { token, record })
    }

    /// The caller's personal tokens (never the token values).
    pub async fn personal_tokens(&self, caller: &Caller) -> Result<Vec<TokenRecord>> {
        self.store
            .list_tokens(&caller.user_id, TokenKind::Personal)
            .await
    }

    /// Revoke one of the caller's personal tokens.
    pub async fn revoke_personal_token(&self, caller: &Caller, token_id: &str) -> Result<()> {
        let owned = self
            .store
            .list_tokens(&caller.user_id, TokenKind::Personal)
            .await?;
        if !owned.iter().any(|t| t.id == token_id) {
            return Err(Error::NotFound(format!("token {token_id}")));
        }
        let event = Event::new(EventType::TokenRevoked, &caller.origin).target("token", token_id);
        self.store
            .delete_token(&caller.user_id, token_id, &event)
            .await?;
        self.forget_tokens();
        Ok(())
    }

    /// Remove expired sessions and tokens and prune limiter state; run periodically.
    pub async fn housekeeping(&self) -> Result<u64> {
        self.limiter.prune();
        let now = Utc::now();
        self.store
            .purge_expired_tokens(now, now - secs(self.cfg.session_idle_secs))
            .await
    }

    /// How long a session lives at most (for the cookie's Max-Age).
    pub fn session_max_age(&self) -> Duration {
        Duration::from_secs(self.cfg.session_max_secs)
    }

    /// Whether cookies must be marked `Secure`.
    pub fn cookie_secure(&self) -> bool {
        self.cfg.cookie_secure
    }
}

fn secs(s: u64) -> chrono::Duration {
    chrono::Duration::seconds(i64::try_from(s).unwrap_or(i64::MAX / 1000))
}
