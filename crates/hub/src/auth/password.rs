//! Password hashing with argon2id, off the async threads and bounded in concurrency.

use std::sync::LazyLock;

use anyhow::{Context, anyhow};
use argon2::Argon2;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use rand::RngCore;
use tokio::sync::Semaphore;

use crate::error::{Error, Result};

/// Shortest accepted password.
pub const MIN_LEN: usize = 8;
/// Longest accepted password (hashing cost grows with length; this bounds it).
pub const MAX_LEN: usize = 256;

/// Each hash takes ~19 MiB and a core for tens of milliseconds; a flood of logins must queue
/// rather than exhaust memory.
static HASHING: LazyLock<Semaphore> = LazyLock::new(|| {
    let cores = std::thread::available_parallelism().map_or(2, |n| n.get());
    Semaphore::new(cores * 2)
});

/// Check a new password against the policy.
pub fn validate(field: &str, password: &str) -> Result<()> {
    let len = password.chars().count();
    if len < MIN_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at least {MIN_LEN} characters"),
        ));
    }
    if len > MAX_LEN {
        return Err(Error::invalid(
            field,
            format!("must be at most {MAX_LEN} characters"),
        ));
    }
    Ok(())
}

/// Hash a password into a PHC string (argon2id, random salt).
pub async fn hash(password: &str) -> Result<String> {
    let password = password.to_owned();
    run_blocking(move || {
        let mut salt = [0u8; 16];
        rand::rng().fill_bytes(&mut salt);
        let salt = SaltString::encode_b64(&salt).map_err(|e| anyhow!("salt: {e}"))?;
        Argon2::default()
            .hash_password(password.as_bytes(), &salt)
            .map(|h| h.to_string())
            .map_err(|e| anyhow!("argon2: {e}"))
    })
    .await
}

/// Whether `password` matches the stored PHC hash.
pub async fn verify(password: &str, phc: &str) -> Result<bool> {
    let password = password.to_owned();
    let phc = phc.to_owned();
    run_blocking(move || {
        let parsed = PasswordHash::new(&phc).map_err(|e| anyhow!("stored hash: {e}"))?;
        Ok(Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok())
    })
    .await
}

async fn run_blocking<T: Send + 'static>(
    work: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> Result<T> {
    let _permit = HASHING
        .acquire()
        .await
        .context("hashing semaphore closed")?;
    let out = tokio::task::spawn_blocking(work)
        .await
        .context("hashing task")??;
    Ok(out)
}
