//! The credentials vault: set, list, delete. A value is sealed under a key of its own, which is
//! sealed under the master key; only a fingerprint and when it was last used are ever shown.

use autopilot_proto::Secrets;
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::app::App;
use crate::domain::tools::{validate_credential_name, Credential};
use crate::domain::{ServiceError, ServiceResult};

/// Longest credential value accepted (a private key in PEM fits).
const MAX_CREDENTIAL_BYTES: usize = 16 * 1024;

/// A credential as shown: never its value.
#[derive(Serialize, Debug)]
pub struct CredentialView {
    pub name: String,
    /// A keyed digest: equal for equal values, revealing nothing of the value.
    pub fingerprint: String,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
}

impl From<Credential> for CredentialView {
    fn from(c: Credential) -> Self {
        Self {
            name: c.name,
            fingerprint: c.fingerprint,
            created_at: c.created_at,
            updated_at: c.updated_at,
            last_used_at: c.last_used_at,
        }
    }
}

pub async fn set_credential(app: &App, name: &str, value: &str) -> ServiceResult<CredentialView> {
    validate_credential_name("name", name)?;
    if value.is_empty() || value.len() > MAX_CREDENTIAL_BYTES {
        return Err(ServiceError::invalid(
            "value",
            format!("must be 1 to {MAX_CREDENTIAL_BYTES} bytes"),
        ));
    }
    let existing = app
        .store
        .list_credentials()
        .await?
        .into_iter()
        .find(|c| c.name == name);
    let now = Utc::now();
    let (wrapped_key, sealed_value) = app
        .sealer
        .seal_enveloped(&Credential::context(name), value.as_bytes());
    let credential = Credential {
        name: name.to_owned(),
        wrapped_key,
        sealed_value,
        fingerprint: app.sealer.fingerprint(value.as_bytes()),
        created_at: existing.as_ref().map_or(now, |c| c.created_at),
        updated_at: now,
        last_used_at: existing.and_then(|c| c.last_used_at),
    };
    app.store.put_credential(&credential).await?;
    tracing::info!(credential.name = %name, "credential set");
    Ok(credential.into())
}

pub async fn list_credentials(app: &App) -> ServiceResult<Vec<CredentialView>> {
    Ok(app
        .store
        .list_credentials()
        .await?
        .into_iter()
        .map(CredentialView::from)
        .collect())
}

pub async fn delete_credential(app: &App, name: &str) -> ServiceResult<()> {
    if !app.store.delete_credential(name).await? {
        return Err(ServiceError::NotFound {
            what: "credential",
            id: name.to_owned(),
        });
    }
    tracing::info!(credential.name = %name, "credential deleted");
    Ok(())
}

/// The value of credential `name`, opened for the control plane's own use (a result handler's
/// signing key); never shown, never logged.
pub(crate) async fn credential_value(app: &App, name: &str) -> ServiceResult<String> {
    let mut secrets = credential_values(app, &[name.to_owned()]).await?;
    secrets.remove(name).ok_or_else(|| {
        ServiceError::Conflict(format!(
            "the credential `{name}` is not set; set it with set_credential"
        ))
    })
}

/// The values of credentials `names`, opened for the control plane's own use (a notify
/// channel's URL); a name not set is a `Conflict` naming it.
pub(crate) async fn credential_values(
    app: &App,
    names: &[String],
) -> ServiceResult<autopilot_proto::Secrets> {
    let stored = app.store.list_credentials().await?;
    let secrets = open_credentials(app, &stored, names).map_err(ServiceError::Conflict)?;
    if !names.is_empty() {
        app.store.mark_credentials_used(names, Utc::now()).await?;
    }
    Ok(secrets)
}

/// The values of the credentials `names`, opened from `stored` (the vault as read).
pub(super) fn open_credentials(
    app: &App,
    stored: &[Credential],
    names: &[String],
) -> Result<Secrets, String> {
    let mut secrets = Secrets::new();
    for name in names {
        let credential = stored.iter().find(|c| &c.name == name).ok_or_else(|| {
            format!("the credential `{name}` is not set; set it with set_credential")
        })?;
        let value = app
            .sealer
            .open_enveloped(
                &Credential::context(name),
                &credential.wrapped_key,
                &credential.sealed_value,
            )
            .map_err(|err| format!("the credential `{name}` could not be opened: {err}"))?;
        let value =
            String::from_utf8(value).map_err(|_| format!("the credential `{name}` is not text"))?;
        secrets.insert(name.clone(), value);
    }
    Ok(secrets)
}
