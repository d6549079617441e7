//! The installation's keys, loaded once at start and then read-only: the admin token's digest,
//! the key that signs OAuth access tokens (sealed in the store, like every secret there), and
//! the hash of the operator's password. Each comes from the configuration, or from the store,
//! or is made on first start (a made admin token or operator password is printed once).

use std::fmt;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::Config;
use crate::seal::Sealer;
use crate::store::Store;
use crate::tokens;

/// The setting that holds the admin token's digest (hex).
pub const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";
/// The access-token signing key, sealed (see `crate::seal`).
const SIGNING_KEY_SETTING: &str = "oauth_signing_key_sealed";
/// Where versions before sealing kept the key in plain hex; moved and blanked at start.
const PLAIN_SIGNING_KEY_SETTING: &str = "oauth_signing_key";
const OPERATOR_PASSWORD_SETTING: &str = "operator_password_argon2";

pub struct Keys {
    admin_token_digest: [u8; 32],
    signing_key: Vec<u8>,
    operator_password_hash: String,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys { <redacted> }")
    }
}

impl Keys {
    /// Loads the keys, making and storing those that do not exist yet.
    pub async fn load(config: &Config, store: &dyn Store, sealer: &Sealer) -> anyhow::Result<Keys> {
        Ok(Keys {
            admin_token_digest: admin_token_digest(config, store).await?,
            signing_key: signing_key(store, sealer).await?,
            operator_password_hash: operator_password_hash(config, store).await?,
        })
    }

    /// Whether `token` is the admin token (compared in constant time).
    pub fn is_admin_token(&self, token: &str) -> bool {
        tokens::same(&tokens::digest(token.trim()), &self.admin_token_digest)
    }

    /// The key that signs and checks OAuth access tokens.
    pub fn signing_key(&self) -> &[u8] {
        &self.signing_key
    }

    /// Checks the operator's password (argon2 compares in constant time).
    pub fn operator_password_matches(&self, password: &str) -> bool {
        PasswordHash::new(&self.operator_password_hash)
            .map(|hash| {
                Argon2::default()
                    .verify_password(password.as_bytes(), &hash)
                    .is_ok()
            })
            .unwrap_or(false)
    }
}

/// The digest of the admin token: from config, or from the store, or of one generated now and
/// printed once.
async fn admin_token_digest(config: &Config, store: &dyn Store) -> anyhow::Result<[u8; 32]> {
    if let Some(token) = &config.admin_token {
        return Ok(tokens::digest(token));
    }
    if let Some(stored) = store.get_setting(ADMIN_TOKEN_SETTING).await? {
        return decode_digest(&stored);
    }
    let token = tokens::mint(tokens::ADMIN_PREFIX);
    let digest = tokens::digest(&token);
    if store
        .put_setting_if_absent(ADMIN_TOKEN_SETTING, &hex::encode(digest))
        .await?
    {
        announce_token(&token, "generated");
        return Ok(digest);
    }
    // Another process stored one first.
    let stored = store
        .get_setting(ADMIN_TOKEN_SETTING)
        .await?
        .context("admin token vanished")?;
    decode_digest(&stored)
}

/// Replaces the stored admin token with a new one and prints it once.
pub async fn rotate_admin_token(config: &Config) -> anyhow::Result<()> {
    let store =
        crate::store::connect_with(&config.database_url, config.database_max_connections).await?;
    let token = tokens::mint(tokens::ADMIN_PREFIX);
    store
        .put_setting(ADMIN_TOKEN_SETTING, &tokens::digest_hex(&token))
        .await?;
    announce_token(&token, "rotated");
    if config.admin_token.is_some() {
        eprintln!("note: AUTOPILOT_ADMIN_TOKEN is set, and takes precedence over the stored token while it is");
    }
    Ok(())
}

fn announce_token(token: &str, how: &str) {
    // Straight to the terminal, not through the logs: this is the only time it is shown.
    eprintln!(
        "\n  Admin token {how} (shown once, stored hashed; keep it safe):\n\n    {token}\n\n  \
         Use it as `Authorization: Bearer <token>`. `autopilot admin-token rotate` makes a new one.\n"
    );
}

fn decode_digest(stored: &str) -> anyhow::Result<[u8; 32]> {
    let bytes = hex::decode(stored).context("stored admin token hash is not hex")?;
    bytes
        .try_into()
        .map_err(|_| anyhow::anyhow!("stored admin token hash has the wrong length"))
}

/// The access-token signing key, shared by every replica through the store, where it is
/// sealed: a copy of the database alone cannot mint tokens. Made on first start; one left in
/// plain hex by an earlier version is sealed and its plain copy blanked, so the tokens it
/// signed stay valid.
async fn signing_key(store: &dyn Store, sealer: &Sealer) -> anyhow::Result<Vec<u8>> {
    let plain = store
        .get_setting(PLAIN_SIGNING_KEY_SETTING)
        .await?
        .filter(|plain| !plain.is_empty());
    let candidate = match &plain {
        Some(plain) => hex::decode(plain).context("the stored plain signing key is not hex")?,
        None => rand::random::<[u8; 32]>().to_vec(),
    };
    store
        .put_setting_if_absent(
            SIGNING_KEY_SETTING,
            &sealer.seal(SIGNING_KEY_SETTING, &candidate),
        )
        .await?;
    let sealed = store
        .get_setting(SIGNING_KEY_SETTING)
        .await?
        .context("signing key vanished")?;
    let key = sealer.open(SIGNING_KEY_SETTING, &sealed).with_context(|| {
        "the OAuth signing key in the store does not open with this secret key \
         (AUTOPILOT_SECRET_KEY or DATA_DIR/secret.key): give every replica the key the store \
         was made with"
    })?;
    if plain.is_some() {
        store.put_setting(PLAIN_SIGNING_KEY_SETTING, "").await?;
    }
    Ok(key)
}

/// The operator's password hash: from config (a password or an argon2 hash), or from the store,
/// or of one generated now and printed once.
async fn operator_password_hash(config: &Config, store: &dyn Store) -> anyhow::Result<String> {
    match &config.operator_password {
        // An argon2 hash can be given as it is; anything else is the password itself.
        Some(given) if given.starts_with("$argon2") => {
            PasswordHash::new(given).map_err(|err| {
                anyhow::anyhow!("AUTOPILOT_OPERATOR_PASSWORD is not a valid argon2 hash: {err}")
            })?;
            Ok(given.clone())
        }
        Some(password) => hash_password(password),
        None => {
            if let Some(hash) = store.get_setting(OPERATOR_PASSWORD_SETTING).await? {
                return Ok(hash);
            }
            let password = tokens::mint(tokens::OAUTH_PREFIX)[..24].to_owned();
            let hash = hash_password(&password)?;
            if store
                .put_setting_if_absent(OPERATOR_PASSWORD_SETTING, &hash)
                .await?
            {
                eprintln!(
                    "\n  Operator password generated (shown once, stored as an argon2 hash): {password}\n  \
                     You enter it on the consent page when you connect Claude to Autopilot. \
                     Set AUTOPILOT_OPERATOR_PASSWORD to choose your own.\n"
                );
                return Ok(hash);
            }
            store
                .get_setting(OPERATOR_PASSWORD_SETTING)
                .await?
                .context("operator password vanished")
        }
    }
}

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|err| anyhow::anyhow!("salt: {err}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("hashing the operator password: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn sqlite_store(dir: &std::path::Path) -> std::sync::Arc<dyn Store> {
        let url = format!("sqlite://{}", dir.join("autopilot.db").display());
        crate::store::connect_with(&url, 1).await.unwrap()
    }

    #[tokio::test]
    async fn the_signing_key_is_sealed_in_the_store_and_the_same_at_every_start() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path()).await;
        let sealer = Sealer::from_key(&[3; 32]);
        let key = signing_key(store.as_ref(), &sealer).await.unwrap();
        assert_eq!(key.len(), 32);
        let stored = store
            .get_setting(SIGNING_KEY_SETTING)
            .await
            .unwrap()
            .unwrap();
        assert!(!stored.contains(&hex::encode(&key)), "stored in plain");
        assert_eq!(signing_key(store.as_ref(), &sealer).await.unwrap(), key);

        let err = signing_key(store.as_ref(), &Sealer::from_key(&[4; 32]))
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("AUTOPILOT_SECRET_KEY"), "{err}");
    }

    #[tokio::test]
    async fn a_plain_signing_key_from_an_earlier_version_is_sealed_and_kept() {
        let dir = tempfile::tempdir().unwrap();
        let store = sqlite_store(dir.path()).await;
        let old = [9u8; 32];
        store
            .put_setting(PLAIN_SIGNING_KEY_SETTING, &hex::encode(old))
            .await
            .unwrap();
        let sealer = Sealer::from_key(&[3; 32]);
        assert_eq!(signing_key(store.as_ref(), &sealer).await.unwrap(), old);
        assert_eq!(
            store
                .get_setting(PLAIN_SIGNING_KEY_SETTING)
                .await
                .unwrap()
                .as_deref(),
            Some(""),
            "the plain copy is blanked"
        );
        assert_eq!(signing_key(store.as_ref(), &sealer).await.unwrap(), old);
    }
}
