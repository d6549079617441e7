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
    /// Keys the fingerprints of secrets (derived from the key, never the key itself).
    fingerprint_key: [u8; 32],
}

impl fmt::Debug for Sealer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Sealer { <redacted> }")
    }
}

impl Sealer {
    pub fn from_key(key: &[u8; 32]) -> Self {
        use sha2::Digest;
        let mut digest = sha2::Sha256::new();
        digest.update(b"autopilot fingerprint key v1");
        digest.update(key);
        Self {
            cipher: XChaCha20Poly1305::new(key.into()),
            fingerprint_key: digest.finalize().into(),
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

    /// Writes `hex_key` as a new key file at `path` (mode 0600; it must not exist yet).
    pub fn write_key_file(path: &Path, hex_key: &str) -> anyhow::Result<()> {
        write_key_file(path, &parse_key(hex_key)?)
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

    /// A short keyed digest of `secret` (HMAC-SHA256 under a key derived from the sealing key):
    /// the same value gives the same fingerprint, and without the key it says nothing of the
    /// value, not even to someone guessing short values.
    pub fn fingerprint(&self, secret: &[u8]) -> String {
        use hmac::Mac;
        let mut mac = <hmac::Hmac<sha2::Sha256> as Mac>::new_from_slice(&self.fingerprint_key)
            .expect("HMAC takes a key of any length");
        mac.update(secret);
        let digest = mac.finalize().into_bytes();
        format!("hmac-sha256:{}", hex::encode(&digest[..8]))
    }

    /// Seals `secret` under a key of its own, which is sealed under this key: returns (the
    /// wrapped key, the sealed value), both bound to `context`. Changing the master key then
    /// means sealing the small keys again, not every value.
    pub fn seal_enveloped(&self, context: &str, secret: &[u8]) -> (String, String) {
        let own_key: [u8; 32] = rand::random();
        let sealed_value = Sealer::from_key(&own_key).seal(context, secret);
        let wrapped_key = self.seal(&format!("{context}:key"), &own_key);
        (wrapped_key, sealed_value)
    }

    /// Opens a value sealed by [`Sealer::seal_enveloped`].
    pub fn open_enveloped(
        &self,
        context: &str,
        wrapped_key: &str,
        sealed_value: &str,
    ) -> Result<Vec<u8>, SealError> {
        let own_key: [u8; 32] = self
            .open(&format!("{context}:key"), wrapped_key)?
            .try_into()
            .map_err(|_| SealError::Format)?;
        Sealer::from_key(&own_key).open(context, sealed_value)
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
    fn enveloped_values_open_only_for_their_record_and_fingerprints_are_keyed() {
        let sealer = Sealer::from_key(&[7; 32]);
        let (key, value) = sealer.seal_enveloped("credential:A", b"s3cret-value");
        assert!(!value.contains("s3cret") && !key.contains("s3cret"));
        assert_eq!(
            sealer.open_enveloped("credential:A", &key, &value).unwrap(),
            b"s3cret-value"
        );
        // Moved to another row, or its key swapped for another value's: it does not open.
        assert!(sealer.open_enveloped("credential:B", &key, &value).is_err());
        let (other_key, _) = sealer.seal_enveloped("credential:A", b"other");
        assert!(sealer
            .open_enveloped("credential:A", &other_key, &value)
            .is_err());
        assert!(Sealer::from_key(&[8; 32])
            .open_enveloped("credential:A", &key, &value)
            .is_err());
        let print = sealer.fingerprint(b"s3cret-value");
        assert_eq!(print, sealer.fingerprint(b"s3cret-value"));
        assert_ne!(print, sealer.fingerprint(b"s3cret-valuf"));
        assert_ne!(
            print,
            Sealer::from_key(&[8; 32]).fingerprint(b"s3cret-value")
        );
        assert_eq!(print.len(), "hmac-sha256:".len() + 16);
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
