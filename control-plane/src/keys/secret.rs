//! Rotating the secret key that seals everything secret in the store: every sealed value is
//! opened with the current key and sealed again with the new one. That is the OAuth signing key
//! ring (and its pre-ring copy, while one is kept), each webhook's signing secret and each
//! credential's own key (a credential's value stays sealed under its own key, which is only
//! wrapped again; its fingerprint, keyed by the secret key, is computed anew).
//!
//! A value that already opens with the new key is left as it is, so a rotation that stopped
//! half-way (a lost connection) is finished by running it again with the same new key.

use anyhow::Context;

use super::signing::{LEGACY_SEALED_SETTING, SIGNING_KEYS_SETTING};
use crate::domain::tools::Credential;
use crate::domain::webhook::Webhook;
use crate::seal::Sealer;
use crate::store::Store;

/// How many values a rotation sealed again, and how many were already under the new key.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Resealed {
    pub settings: usize,
    pub webhooks: usize,
    pub credentials: usize,
    pub already: usize,
}

/// Opens `sealed` (for `context`) with `old` and seals it with `new`; `None` when it already
/// opens with `new`.
fn reseal(
    old: &Sealer,
    new: &Sealer,
    context: &str,
    sealed: &str,
    what: &str,
) -> anyhow::Result<Option<String>> {
    if new.open(context, sealed).is_ok() {
        return Ok(None);
    }
    let plain = old
        .open(context, sealed)
        .with_context(|| format!("{what} opens with neither the current nor the new key"))?;
    Ok(Some(new.seal(context, &plain)))
}

/// Seals every sealed value of `store` again, from `old` to `new`.
pub async fn reseal_all(store: &dyn Store, old: &Sealer, new: &Sealer) -> anyhow::Result<Resealed> {
    let mut done = Resealed::default();
    for setting in [SIGNING_KEYS_SETTING, LEGACY_SEALED_SETTING] {
        let Some(sealed) = store.get_setting(setting).await?.filter(|s| !s.is_empty()) else {
            continue;
        };
        match reseal(
            old,
            new,
            setting,
            &sealed,
            &format!("the setting {setting}"),
        )? {
            None => done.already += 1,
            Some(resealed) => {
                anyhow::ensure!(
                    store.replace_setting(setting, &sealed, &resealed).await?,
                    "the setting {setting} changed during the rotation; run it again"
                );
                done.settings += 1;
            }
        }
    }
    for mut webhook in store.list_webhooks().await? {
        let Some(sealed) = webhook.signing_secret.clone() else {
            continue;
        };
        let context = Webhook::secret_context(webhook.id);
        let what = format!("the signing secret of webhook `{}`", webhook.name);
        match reseal(old, new, &context, &sealed, &what)? {
            None => done.already += 1,
            Some(resealed) => {
                webhook.signing_secret = Some(resealed);
                store.update_webhook(&webhook).await?;
                done.webhooks += 1;
            }
        }
    }
    for mut credential in store.list_credentials().await? {
        let context = Credential::context(&credential.name);
        let key_context = format!("{context}:key");
        let what = format!("the key of credential `{}`", credential.name);
        match reseal(old, new, &key_context, &credential.wrapped_key, &what)? {
            None => done.already += 1,
            Some(wrapped) => {
                credential.wrapped_key = wrapped;
                let value = new
                    .open_enveloped(&context, &credential.wrapped_key, &credential.sealed_value)
                    .with_context(|| format!("credential `{}` does not open", credential.name))?;
                credential.fingerprint = new.fingerprint(&value);
                store.put_credential(&credential).await?;
                done.credentials += 1;
            }
        }
    }
    Ok(done)
}
