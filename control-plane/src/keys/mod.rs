//! The installation's keys: the admin token's digest, the keys that sign OAuth access tokens
//! (sealed in the store like every secret there, and rotated without logging clients out; see
//! [`signing`]), and the hash of the operator's password. Each comes from the configuration, or
//! from the store, or is made on first start (a made admin token or operator password is
//! printed once). All but the signing keys are read once at start.

pub mod secret;
pub mod signing;

use std::fmt;
use std::sync::Arc;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::Config;
use crate::seal::Sealer;
use crate::store::Store;
use crate::tokens;
use signing::{Rotation, SigningKeys, ROTATION_MARGIN};

/// The setting that holds the admin token's digest (hex).
pub const ADMIN_TOKEN_SETTING: &str = "admin_token_sha256";
const OPERATOR_PASSWORD_SETTING: &str = "operator_password_argon2";

pub struct Keys {
    admin_token_digest: [u8; 32],
    signing: SigningKeys,
    operator_password_hash: String,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys { <redacted> }")
    }
}

impl Keys {
    /// Loads the keys, making and storing those that do not exist yet.
    pub async fn load(
        config: &Config,
        store: &Arc<dyn Store>,
        sealer: &Sealer,
    ) -> anyhow::Result<Keys> {
        Ok(Keys {
            admin_token_digest: admin_token_digest(config, store.as_ref()).await?,
            signing: SigningKeys::load(Arc::clone(store), sealer.clone()).await?,
            operator_password_hash: operator_password_hash(config, store.as_ref()).await?,
        })
    }

    /// Whether `token` is the admin token (compared in constant time).
    pub fn is_admin_token(&self, token: &str) -> bool {
        tokens::same(&tokens::digest(token.trim()), &self.admin_token_digest)
    }

    /// The keys that sign and check OAuth access tokens.
    pub fn signing(&self) -> &SigningKeys {
        &self.signing
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

/// Rotates the keys that sign OAuth access tokens (`autopilot signing-key rotate`): a new key
/// signs from now on; the one it replaces keeps verifying for the access-token lifetime and a
/// margin, or, with `revoke_previous`, stops at once (every access token then has to be
/// refreshed; refresh tokens are not signed with it and stay valid).
pub async fn rotate_signing_key(config: &Config, revoke_previous: bool) -> anyhow::Result<()> {
    let store =
        crate::store::connect_with(&config.database_url, config.database_max_connections).await?;
    // The installation's own key: a new one made here would seal a ring no replica can open.
    let sealer = Sealer::load_existing(config.secret_key.as_deref(), &config.data_dir)?;
    let rotation = if revoke_previous {
        Rotation::RevokePrevious
    } else {
        Rotation::Graceful {
            grace: config.access_token_ttl + ROTATION_MARGIN,
        }
    };
    let ring = signing::rotate(store.as_ref(), &sealer, rotation).await?;
    // Key ids are not secret; the keys are never shown.
    eprintln!(
        "OAuth signing key rotated: access tokens are signed with key {} from now on.",
        ring.current().kid()
    );
    for retired in ring.retired() {
        eprintln!(
            "Key {} still verifies the tokens it signed until {}.",
            retired.key.kid(),
            retired
                .verify_until
                .to_rfc3339_opts(chrono::SecondsFormat::Secs, true)
        );
    }
    if revoke_previous {
        eprintln!(
            "Every earlier key was dropped: access tokens signed before are refused (by every              replica within {} s) and clients refresh them.",
            signing::RING_MAX_AGE.as_secs()
        );
    }
    Ok(())
}

/// `autopilot secret-key rotate`: seals every secret in the store again under a new secret key
/// (`new_key`, 64 hex digits, or one made now), then keeps it where the current one is kept: a
/// key file is replaced (the old one kept beside it as `secret.key.old`); a key given by
/// `AUTOPILOT_SECRET_KEY` is printed once, for the operator to set everywhere. Every control
/// plane must be restarted after it: until then they hold the old key.
pub async fn rotate_secret_key(config: &Config, new_key: Option<&str>) -> anyhow::Result<()> {
    let store =
        crate::store::connect_with(&config.database_url, config.database_max_connections).await?;
    let old = Sealer::load_existing(config.secret_key.as_deref(), &config.data_dir)?;
    let new_hex = match new_key {
        Some(hex_key) => hex_key.trim().to_owned(),
        None => hex::encode(rand::random::<[u8; 32]>()),
    };
    let new = Sealer::load(Some(&new_hex), &config.data_dir)
        .context("the new key (--new-key or AUTOPILOT_NEW_SECRET_KEY)")?;
    let done = secret::reseal_all(store.as_ref(), &old, &new).await?;
    eprintln!(
        "Sealed again under the new key: {} settings, {} webhook signing secrets, {} credential \
         keys ({} values were already under it).",
        done.settings, done.webhooks, done.credentials, done.already
    );
    if config.secret_key.is_some() {
        // Straight to the terminal, not the logs: the only time it is shown.
        eprintln!(
            "\n  The new secret key (shown once; keep it safe):\n\n    {new_hex}\n\n  Set \
             AUTOPILOT_SECRET_KEY to it on every control plane, then restart them: until then \
             they hold the old key and cannot open what was sealed again.\n"
        );
    } else {
        let path = config.data_dir.join("secret.key");
        let kept = config.data_dir.join("secret.key.old");
        std::fs::rename(&path, &kept)
            .with_context(|| format!("cannot keep the old key as {}", kept.display()))?;
        Sealer::write_key_file(&path, &new_hex)?;
        eprintln!(
            "The new key is in {}; the old one is kept as {} (delete it once Autopilot runs \
             with the new key). Restart Autopilot now.",
            path.display(),
            kept.display()
        );
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
                     You sign in to the dashboard with it, and enter it on the consent page when \
                     you connect Claude to Autopilot. Set AUTOPILOT_OPERATOR_PASSWORD to choose \
                     your own.\n"
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
