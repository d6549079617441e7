//! The authorization server's secrets: the key that signs access tokens and the operator's
//! password hash. Both are made on first start when the configuration gives none.

use std::fmt;

use anyhow::Context;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;

use crate::config::Config;
use crate::store::Store;

const SIGNING_KEY_SETTING: &str = "oauth_signing_key";
const OPERATOR_PASSWORD_SETTING: &str = "operator_password_argon2";

pub struct Keys {
    pub(super) signing_key: Vec<u8>,
    operator_password_hash: String,
}

impl fmt::Debug for Keys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Keys { <redacted> }")
    }
}

impl Keys {
    /// Loads the keys, making and storing them on first start. A generated operator password is
    /// printed once.
    pub async fn load(config: &Config, store: &dyn Store) -> anyhow::Result<Keys> {
        let generated_key = hex::encode(rand::random::<[u8; 32]>());
        store
            .put_setting_if_absent(SIGNING_KEY_SETTING, &generated_key)
            .await?;
        let signing_key = hex::decode(
            store
                .get_setting(SIGNING_KEY_SETTING)
                .await?
                .context("signing key vanished")?,
        )
        .context("stored signing key is not hex")?;
        let operator_password_hash = match &config.operator_password {
            // An argon2 hash can be given as it is; anything else is the password itself.
            Some(given) if given.starts_with("$argon2") => {
                PasswordHash::new(given).map_err(|err| {
                    anyhow::anyhow!("AUTOPILOT_OPERATOR_PASSWORD is not a valid argon2 hash: {err}")
                })?;
                given.clone()
            }
            Some(password) => hash_password(password)?,
            None => match store.get_setting(OPERATOR_PASSWORD_SETTING).await? {
                Some(hash) => hash,
                None => {
                    let password = super::random_secret()[..24].to_owned();
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
                        hash
                    } else {
                        store
                            .get_setting(OPERATOR_PASSWORD_SETTING)
                            .await?
                            .context("operator password vanished")?
                    }
                }
            },
        };
        Ok(Keys {
            signing_key,
            operator_password_hash,
        })
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

pub fn hash_password(password: &str) -> anyhow::Result<String> {
    let salt = SaltString::encode_b64(&rand::random::<[u8; 16]>())
        .map_err(|err| anyhow::anyhow!("salt: {err}"))?;
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|err| anyhow::anyhow!("hashing the operator password: {err}"))
}
