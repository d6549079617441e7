//! Secrets at rest: values such as webhook signing secrets are sealed with XChaCha20-Poly1305
//! before they reach the store, and opened only in memory when needed.
//!
//! The key comes from `AUTOPILOT_SECRET_KEY` (64 hex digits). Without it, the embedded default
//! makes one on first start and keeps it in `DATA_DIR/secret.key` (mode 0600), apart from the
//! database: a copy of the database alone (a backup, a dump) reveals no secret. Every sealed value
//! is bound to a context string (which record and field it belongs to), so a sealed value copied
//! into another row does not open.

use std::fmt;
use std::io::Write;
use std::path::Path;

use anyhow::Context;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chacha20poly1305::aead::{Aead, KeyInit, Payload};
use chacha20poly1305::{XChaCha20Poly1305, XNonce};

/// Prefix of the current sealing format, so a later format can be told apart.
const FORMAT: &str = "v1.";
const NONCE_BYTES: usize = 24;

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("the sealed value is not in a known format")]
    Format,
    #[error(
        "the sealed value does not open with this key (was AUTOPILOT_SECRET_KEY changed, or the \
         value moved to another record?)"
    )]
    Open,
}

/// Seals and opens secrets with one key.
#[derive(Clone)]
pub struct Sealer {
    cipher: XChaCha20Poly1305,
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer { <redacted> }")
    }
}

impl Sealer {
    pub fn from_key(key: &[u8; 32]) -> Self {
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
        }
    }

    /// The configured key, or the data directory's key file (made now if missing).
    pub fn load(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Sealer> {
        if let Some(hex_key) = configured {
            return parse_key(hex_key)
                .map(|key| Sealer::from_key(&key))
                .context("AUTOPILOT_SECRET_KEY must be 64 hex digits (32 bytes), e.g. from `openssl rand -hex 32`");
        }
        let path = data_dir.join("secret.key");
        match std::fs::read_to_string(&path) {
            Ok(text) => parse_key(text.trim())
                .map(|key| Sealer::from_key(&key))
                .with_context(|| {
                    format!(
                        "{} does not hold a 64-hex-digit key; restore it from a backup (sealed \
                         secrets cannot be opened without it)",
                        path.display()
                    )
                }),
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                let key: [u8; 32] = rand::random();
                write_key_file(&path, &key)?;
                tracing::info!(path = %path.display(), "generated the key that seals secrets at rest");
                Ok(Sealer::from_key(&key))
            }
            Err(err) => {
                Err(anyhow::Error::new(err).context(format!("cannot read {}", path.display())))
            }
        }
    }

    /// The configured key or the data directory's key file, which must exist: for commands that
    /// work on an existing installation and must not make a key of their own.
    pub fn load_existing(configured: Option<&str>, data_dir: &Path) -> anyhow::Result<Sealer> {
        let path = data_dir.join("secret.key");
        if configured.is_none() && !path.exists() {
            anyhow::bail!(
                "no secret key: {} does not exist; set AUTOPILOT_DATA_DIR to the installation's                  data directory, or AUTOPILOT_SECRET_KEY to its key",
                path.display()
            );
        }
        Sealer::load(configured, data_dir)
    }

    /// Seals `plaintext` for the record and field named by `context`.
    pub fn seal(&self, context: &str, plaintext: &[u8]) -> String {
        let nonce_bytes: [u8; NONCE_BYTES] = rand::random();
        let nonce = XNonce::from_slice(&nonce_bytes);
        let sealed = self
            .cipher
            .encrypt(
                nonce,
                Payload {
                    msg: plaintext,
                    aad: context.as_bytes(),
                },
            )
            .expect("XChaCha20-Poly1305 encryption cannot fail for in-memory buffers");
        let mut bytes = Vec::with_capacity(NONCE_BYTES + sealed.len());
        bytes.extend_from_slice(&nonce_bytes);
        bytes.extend_from_slice(&sealed);
        format!("{FORMAT}{}", URL_SAFE_NO_PAD.encode(bytes))
    }

    /// Opens a value sealed for `context`.
    pub fn open(&self, context: &str, sealed: &str) -> Result<Vec<u8>, SealError> {
        let encoded = sealed.strip_prefix(FORMAT).ok_or(SealError::Format)?;
        let bytes = URL_SAFE_NO_PAD
            .decode(encoded)
            .map_err(|_| SealError::Format)?;
        if bytes.len() < NONCE_BYTES {
            return Err(SealError::Format);
        }
        let (nonce, ciphertext) = bytes.split_at(NONCE_BYTES);
        self.cipher
            .decrypt(
                XNonce::from_slice(nonce),
                Payload {
                    msg: ciphertext,
                    aad: context.as_bytes(),
                },
            )
            .map_err(|_| SealError::Open)
    }
}

fn parse_key(text: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(text.trim()).context("not hex")?;
    bytes
        .try_into()
        .map_err(|bytes: Vec<u8>| anyhow::anyhow!("{} bytes instead of 32", bytes.len()))
}

fn write_key_file(path: &Path, key: &[u8; 32]) -> anyhow::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .with_context(|| format!("cannot create {}", path.display()))?;
    file.write_all(hex::encode(key).as_bytes())
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_values_open_only_with_their_key_and_context() {
        let sealer = Sealer::from_key(&[7; 32]);
        let sealed = sealer.seal("webhook:1:signing_secret", b"whsec_abc");
        assert!(sealed.starts_with("v1."));
        assert!(!sealed.contains("whsec_abc"));
        assert_eq!(
            sealer.open("webhook:1:signing_secret", &sealed).unwrap(),
            b"whsec_abc"
        );
        assert!(matches!(
            sealer.open("webhook:2:signing_secret", &sealed),
            Err(SealError::Open)
        ));
        assert!(matches!(
            Sealer::from_key(&[8; 32]).open("webhook:1:signing_secret", &sealed),
            Err(SealError::Open)
        ));
        assert!(matches!(sealer.open("x", "plain"), Err(SealError::Format)));
        assert!(matches!(
            sealer.open("x", "v1.AAAA"),
            Err(SealError::Format)
        ));
        // The same secret seals differently each time (fresh nonce).
        assert_ne!(
            sealed,
            sealer.seal("webhook:1:signing_secret", b"whsec_abc")
        );
    }

    #[test]
    fn the_key_file_is_made_once_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let first = Sealer::load(None, dir.path()).unwrap();
        let sealed = first.seal("c", b"secret");
        let second = Sealer::load(None, dir.path()).unwrap();
        assert_eq!(second.open("c", &sealed).unwrap(), b"secret");
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.path().join("secret.key"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let elsewhere = tempfile::tempdir().unwrap();
        let err = Sealer::load_existing(None, elsewhere.path()).unwrap_err();
        assert!(format!("{err:#}").contains("AUTOPILOT_DATA_DIR"), "{err:#}");
        assert!(
            !elsewhere.path().join("secret.key").exists(),
            "no key is made"
        );
        let existing = Sealer::load_existing(None, dir.path()).unwrap();
        assert_eq!(existing.open("c", &sealed).unwrap(), b"secret");
        let err = Sealer::load(Some("abc"), dir.path()).unwrap_err();
        assert!(
            format!("{err:#}").contains("AUTOPILOT_SECRET_KEY"),
            "{err:#}"
        );
    }
}
