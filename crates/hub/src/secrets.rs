//! Secrets at rest: ChaCha20-Poly1305 with a key from the configuration, the environment
//! (`SMON_SECRET_KEY`) or a key file generated in the data directory (mode 0600).

use std::path::Path;

use anyhow::{Context, bail};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use chacha20poly1305::aead::{Aead, KeyInit};
use chacha20poly1305::{ChaCha20Poly1305, Key, Nonce};
use rand::RngCore;

use crate::error::{Error, Result};

/// Format marker of sealed values, so that the scheme can change later.
const VERSION: &str = "v1:";
/// The key file's name in the data directory.
pub const KEY_FILE: &str = "secret.key";

/// Seals and opens secrets stored in the database.
#[derive(Clone)]
pub struct SecretBox {
    cipher: ChaCha20Poly1305,
}

impl std::fmt::Debug for SecretBox {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("SecretBox(<key redacted>)")
    }
}

fn parse_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let text = text.trim();
    let bytes = if text.len() == 64 && text.chars().all(|c| c.is_ascii_hexdigit()) {
        hex::decode(text)?
    } else {
        STANDARD.decode(text).context("not base64 or hex")?
    };
    bytes
        .try_into()
        .map_err(|b: Vec<u8>| anyhow::anyhow!("is {} bytes, not 32", b.len()))
}

impl SecretBox {
    /// A box with this 32-byte key.
    pub fn new(key: [u8; 32]) -> Self {
        Self {
            cipher: ChaCha20Poly1305::new(Key::from_slice(&key)),
        }
    }

    /// The configured key (32 bytes, base64 or hex), else the data directory's key file,
    /// created with a random key on first use.
    pub fn load(configured: &str, data_dir: &Path) -> anyhow::Result<Self> {
        if !configured.trim().is_empty() {
            let key = parse_key(configured).context("secret_key (SMON_SECRET_KEY)")?;
            return Ok(Self::new(key));
        }
        let path = data_dir.join(KEY_FILE);
        match std::fs::read_to_string(&path) {
            Ok(text) => {
                let key =
                    parse_key(&text).with_context(|| format!("key file {}", path.display()))?;
                Ok(Self::new(key))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                let mut key = [0u8; 32];
                rand::rng().fill_bytes(&mut key);
                write_private(&path, &STANDARD.encode(key))?;
                tracing::info!(path = %path.display(), "generated the key for secrets at rest; back it up with the database");
                Ok(Self::new(key))
            }
            Err(e) => bail!("cannot read key file {}: {e}", path.display()),
        }
    }

    /// Encrypt `plain` with a fresh random nonce.
    pub fn seal(&self, plain: &str) -> String {
        let mut nonce = [0u8; 12];
        rand::rng().fill_bytes(&mut nonce);
        let sealed = self
            .cipher
            .encrypt(Nonce::from_slice(&nonce), plain.as_bytes())
            .expect("ChaCha20-Poly1305 encryption does not fail for in-memory input");
        let mut out = nonce.to_vec();
        out.extend_from_slice(&sealed);
        format!("{VERSION}{}", STANDARD.encode(out))
    }

    /// Decrypt a value made by [`SecretBox::seal`]; a wrong key or tampering is an error.
    pub fn open(&self, sealed: &str) -> Result<String> {
        let corrupt = || {
            Error::Internal(anyhow::anyhow!(
                "a stored secret cannot be decrypted (wrong secret key?)"
            ))
        };
        let raw = sealed
            .strip_prefix(VERSION)
            .and_then(|b64| STANDARD.decode(b64).ok())
            .filter(|raw| raw.len() > 12)
            .ok_or_else(corrupt)?;
        let (nonce, body) = raw.split_at(12);
        let plain = self
            .cipher
            .decrypt(Nonce::from_slice(nonce), body)
            .map_err(|_| corrupt())?;
        String::from_utf8(plain).map_err(|_| corrupt())
    }
}

fn write_private(path: &Path, contents: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    let mut file = options
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(contents.as_bytes())?;
    file.sync_all()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_the_same_key() {
        let a = SecretBox::new([7; 32]);
        let sealed = a.seal("whsec_abc");
        assert!(sealed.starts_with("v1:") && !sealed.contains("whsec_abc"));
        assert_ne!(sealed, a.seal("whsec_abc"), "fresh nonce every time");
        assert_eq!(a.open(&sealed).unwrap(), "whsec_abc");
        assert!(SecretBox::new([8; 32]).open(&sealed).is_err());
        let mut tampered = sealed.clone();
        tampered.replace_range(10..11, if &sealed[10..11] == "A" { "B" } else { "A" });
        assert!(a.open(&tampered).is_err());
    }

    #[test]
    fn the_key_file_is_generated_once_with_owner_only_permissions() {
        let dir = tempfile::tempdir().unwrap();
        let first = SecretBox::load("", dir.path()).unwrap();
        let sealed = first.seal("x");
        let again = SecretBox::load("", dir.path()).unwrap();
        assert_eq!(again.open(&sealed).unwrap(), "x");
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(dir.path().join(KEY_FILE))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let configured = SecretBox::load(&"ab".repeat(32), dir.path()).unwrap();
        assert!(
            configured.open(&sealed).is_err(),
            "a configured key wins over the file"
        );
        assert!(
            SecretBox::load("short", dir.path())
                .unwrap_err()
                .to_string()
                .contains("SMON_SECRET_KEY")
        );
    }
}
