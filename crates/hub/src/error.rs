//! The hub's one error type and its mapping to HTTP answers.

use std::time::Duration;

use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// Result alias used across the hub.
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// What went wrong, phrased for the caller.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The request could not be read (malformed JSON, wrong content type, bad query string).
    #[error("{0}")]
    BadRequest(String),
    /// A field has a value the hub does not accept.
    #[error("{field}: {reason}")]
    Invalid { field: String, reason: String },
    /// No valid credentials were presented.
    #[error("{0}")]
    Unauthorized(String),
    /// The caller is known but may not do this.
    #[error("{0}")]
    Forbidden(String),
    /// The named thing does not exist.
    #[error("{0} not found")]
    NotFound(String),
    /// The request conflicts with the current state.
    #[error("{0}")]
    Conflict(String),
    /// Too many requests; try again after the given time.
    #[error("too many requests, retry in {} s", retry_after_secs(*retry_after))]
    RateLimited {
        retry_after: Duration,
        /// The limit that was reached, for `X-RateLimit-*` headers.
        limit: Option<u32>,
    },
    /// The body is larger than the configured limit.
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    /// The body is not JSON.
    #[error("{0}")]
    UnsupportedMediaType(String),
    /// The route exists but not with this method.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// A dependency (the database) cannot serve right now.
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// A bug or an infrastructure failure; logged, never shown.
    #[error("internal error")]
    Internal(#[from] anyhow::Error),
}

fn retry_after_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

impl Error {
    /// Shorthand for [`Error::Invalid`].
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::Invalid {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The HTTP status this error is answered with.
    pub fn status(&self) -> StatusCode {
        match self {
            Error::BadRequest(_) | Error::Invalid { .. } => StatusCode::BAD_REQUEST,
            Error::Unauthorized(_) => StatusCode::UNAUTHORIZED,
            Error::Forbidden(_) => StatusCode::FORBIDDEN,
            Error::NotFound(_) => StatusCode::NOT_FOUND,
            Error::Conflict(_) => StatusCode::CONFLICT,
            Error::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            Error::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Error::UnsupportedMediaType(_) => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Error::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Error::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            Error::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }
}

impl From<sqlx::Error> for Error {
    fn from(e: sqlx::Error) -> Self {
        // PostgreSQL text cannot hold NUL (SQLite stores it): the client's input, not a fault.
        if let sqlx::Error::Database(d) = &e
            && d.code().as_deref() == Some("22021")
        {
            return Error::BadRequest("text must not contain NUL characters (\\u0000)".into());
        }
        Error::Internal(anyhow::Error::new(e).context("database"))
    }
}

impl From<sqlx::migrate::MigrateError> for Error {
    fn from(e: sqlx::migrate::MigrateError) -> Self {
        Error::Internal(anyhow::Error::new(e).context("database migration"))
    }
}

/// Lets one log line through per second and counts the rest.
struct LogThrottle {
    second: std::sync::atomic::AtomicI64,
    suppressed: std::sync::atomic::AtomicU64,
}

impl LogThrottle {
    /// `Some(lines suppressed since the last one)` when a line may be logged now.
    fn allow(&self) -> Option<u64> {
        self.allow_at(chrono::Utc::now().timestamp())
    }

    fn allow_at(&self, now: i64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.second.load(Relaxed);
        if now != last
            && self
                .second
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            return Some(self.suppressed.swap(0, Relaxed));
        }
        self.suppressed.fetch_add(1, Relaxed);
        None
    }
}

static UNAVAILABLE_LOG: LogThrottle = LogThrottle {
    second: std::sync::atomic::AtomicI64::new(0),
    suppressed: std::sync::atomic::AtomicU64::new(0),
};

impl IntoResponse for Error {
    fn into_response(self) -> Response {
        let status = self.status();
        match &self {
            Error::Internal(e) => tracing::error!(error = format!("{e:#}"), "internal error"),
            Error::Unavailable(m) => {
                // An overload answers thousands of requests 503 a second: one line a second
                // says so, with how many it stands for.
                if let Some(suppressed) = UNAVAILABLE_LOG.allow() {
                    tracing::warn!(reason = %m, suppressed, "service unavailable");
                }
            }
            _ => {}
        }
        let mut response =
            (status, axum::Json(json!({ "error": self.to_string() }))).into_response();
        if let Error::RateLimited { retry_after, limit } = self {
            let secs = retry_after_secs(retry_after).max(1);
            let headers = response.headers_mut();
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs));
            if let Some(limit) = limit {
                headers.insert("x-ratelimit-limit", HeaderValue::from(limit));
                headers.insert("x-ratelimit-remaining", HeaderValue::from(0));
                headers.insert("x-ratelimit-reset", HeaderValue::from(secs));
            }
        }
        response
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unavailability_is_logged_once_a_second_with_what_was_left_out() {
        let t = LogThrottle {
            second: std::sync::atomic::AtomicI64::new(0),
            suppressed: std::sync::atomic::AtomicU64::new(0),
        };
        assert_eq!(t.allow_at(100), Some(0));
        assert_eq!(t.allow_at(100), None);
        assert_eq!(t.allow_at(100), None);
        assert_eq!(t.allow_at(101), Some(2));
        assert_eq!(t.allow_at(101), None);
    }
}
