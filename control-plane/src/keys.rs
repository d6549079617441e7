//! The installation's keys, loaded once at start and then read-only: the admin token's digest,
//! the key that signs OAuth access tokens, and the hash of the operator's password. Each comes
//! from the configuration, or from the store, or is made on first start (a made admin token or
//! operator password is printed once).

use std::fmt;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::Config;
use crate::store::Store;
use crate::tokens;

/// The setting that holds the admin token's digest (hex).
pub const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";
const SIGNING_KEY_SETTING: &str = "oauth_signing_key";
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
    pub async fn load(config: &Config, store: &dyn Store) -> anyhow::Result<Keys> {
        Ok(Keys {
            admin_token_digest: admin_token_digest(config, store).await?,
            signing_key: signing_key(store).await?,
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

/// The access-token signing key, made on first start and shared by every replica through the store.
async fn signing_key(store: &dyn Store) -> anyhow::Result<Vec<u8>> {
    let generated_key = hex::encode(rand::random::<[u8; 32]>());
    store
        .put_setting_if_absent(SIGNING_KEY_SETTING, &generated_key)
        .await?;
    hex::decode(
        store
            .get_setting(SIGNING_KEY_SETTING)
            .await?
            .context("signing key vanished")?,
    )
    .context("stored signing key is not hex")
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
