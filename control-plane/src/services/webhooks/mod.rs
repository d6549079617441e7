//! Webhooks: validation, create / update / delete, secret rotation, and replaying a delivery.
//! What happens when a delivery arrives is in `crate::webhooks::delivery`.

use autopilot_proto::{JobId, WebhookId};
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::app::App;
use crate::error::{ServiceError, ServiceResult};
use crate::model::{RetryPolicy, Run};
use crate::services::jobs::{nullable, RetryInput};
use crate::webhooks::model::{PreviousToken, RateLimit, SignatureSchemeName, Webhook};

mod validate;

use validate::Validated;

pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const MAX_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_DEDUP_WINDOW_SECS: u64 = 24 * 3600;
const MAX_DEDUP_WINDOW_SECS: u64 = 30 * 24 * 3600;
pub const DEFAULT_RATE_PER_SECOND: f64 = 100.0;
pub const DEFAULT_BURST: u32 = 200;
const MAX_TEMPLATE_BYTES: usize = 256 * 1024;
const MAX_ROTATION_GRACE_SECS: u64 = 7 * 24 * 3600;
/// Prefix of webhook URL tokens (then 43 characters: 256 random bits, base64url).
pub const TOKEN_PREFIX: &str = "wh_";
/// Characters of the token kept to recognise it.
const TOKEN_HINT_CHARS: usize = 8;

/// A webhook as clients create it. Unknown fields are refused by name.
#[derive(Deserialize, Debug, Default, Clone)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    pub name: String,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub enabled: Option<bool>,
    /// What a run is asked, with `{{payload.…}}`, `{{headers.…}}` and `{{query.…}}` filled in.
    #[serde(default)]
    pub prompt_template: Option<String>,
    /// A job (id or name) whose settings runs take; its prompt comes first.
    #[serde(default)]
    pub job: Option<String>,
    #[serde(default)]
    pub model: Option<String>,
    #[serde(default)]
    pub allowed_tools: Option<Vec<String>>,
    #[serde(default)]
    pub disallowed_tools: Option<Vec<String>>,
    #[serde(default)]
    pub max_turns: Option<u32>,
    #[serde(default)]
    pub timeout_secs: Option<u64>,
    #[serde(default)]
    pub max_cost_usd: Option<f64>,
    #[serde(default)]
    pub pool: Option<String>,
    #[serde(default)]
    pub retry: Option<RetryInput>,
    #[serde(default)]
    pub signature: Option<SignatureInput>,
    #[serde(default)]
    pub idempotency_header: Option<String>,
    #[serde(default)]
    pub dedup_window_secs: Option<u64>,
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    #[serde(default)]
    pub rate_limit: Option<RateLimitInput>,
}

#[derive(Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct SignatureInput {
    pub scheme: SignatureSchemeName,
    /// The signing secret. Stripe and Slack issue theirs; for `github` and `hmac_sha256` one is
    /// generated (and shown once) when left out.
    #[serde(default)]
    pub secret: Option<String>,
    /// The header of `hmac_sha256` (default `X-Signature-256`).
    #[serde(default)]
    pub header: Option<String>,
    #[serde(default)]
    pub tolerance_secs: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, Copy)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    pub per_second: f64,
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A partial update: a field left out keeps its value, `null` clears an optional one.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    pub name: Option<String>,
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    pub enabled: Option<bool>,
    #[serde(default, deserialize_with = "nullable")]
    pub prompt_template: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub job: Option<Option<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub model: Option<Option<String>>,
    pub allowed_tools: Option<Vec<String>>,
    pub disallowed_tools: Option<Vec<String>>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_turns: Option<Option<u32>>,
    pub timeout_secs: Option<u64>,
    #[serde(default, deserialize_with = "nullable")]
    pub max_cost_usd: Option<Option<f64>>,
    pub pool: Option<String>,
    pub retry: Option<RetryInput>,
    pub signature: Option<SignatureInput>,
    #[serde(default, deserialize_with = "nullable")]
    pub idempotency_header: Option<Option<String>>,
    pub dedup_window_secs: Option<u64>,
    pub max_body_bytes: Option<u64>,
    pub rate_limit: Option<RateLimitInput>,
}

/// What a rotation changes.
#[derive(Deserialize, Debug, Default)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The old URL keeps working this long (default 0: it stops at once; at most a week).
    #[serde(default)]
    pub grace_secs: Option<u64>,
    /// Also replace the signing secret: `true` generates one (github, hmac_sha256), a string
    /// sets it.
    #[serde(default)]
    pub signing_secret: Option<SecretRotation>,
}

#[derive(Deserialize, Debug)]
#[serde(untagged)]
pub enum SecretRotation {
    Generate(bool),
    Set(String),
}

/// A webhook as clients see it. The URL token and the signing secret are never shown again after
/// they were made; `url_hint` tells which URL is current.
#[derive(Serialize, Debug, Clone)]
pub struct WebhookView {
    pub id: WebhookId,
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub url_hint: String,
    pub job_id: Option<JobId>,
    pub prompt_template: Option<String>,
    pub model: Option<String>,
    pub allowed_tools: Vec<String>,
    pub disallowed_tools: Vec<String>,
    pub max_turns: Option<u32>,
    pub timeout_secs: u64,
    pub max_cost_usd: Option<f64>,
    pub pool: String,
    pub retry: RetryPolicy,
    pub signature: SignatureView,
    pub idempotency_header: Option<String>,
    pub dedup_window_secs: u64,
    pub max_body_bytes: u64,
    pub rate_limit: RateLimit,
    pub previous_url_expires_at: Option<DateTime<Utc>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Serialize, Debug, Clone)]
pub struct SignatureView {
    pub scheme: SignatureSchemeName,
    pub header: Option<String>,
    pub tolerance_secs: u64,
    pub has_secret: bool,
}

/// The answer to a create or a rotation: the view, plus what is shown only now.
#[derive(Serialize, Debug)]
pub struct WebhookSecrets {
    #[serde(flatten)]
    pub webhook: WebhookView,
    /// The full URL to give the sender. Shown once.
    pub url: String,
    /// A signing secret Autopilot generated. Shown once.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signing_secret: Option<String>,
}

impl WebhookView {
    pub fn new(webhook: &Webhook, public_url: &str) -> Self {
        let config = &webhook.config;
        WebhookView {
            id: webhook.id,
            name: webhook.name.clone(),
            description: config.description.clone(),
            enabled: webhook.enabled,
            url_hint: format!("{public_url}/hooks/{}…", config.token_hint),
            job_id: webhook.job_id,
            prompt_template: config.prompt_template.clone(),
            model: config.run.model.clone(),
            allowed_tools: config.run.allowed_tools.clone(),
            disallowed_tools: config.run.disallowed_tools.clone(),
            max_turns: config.run.max_turns,
            timeout_secs: config.run.timeout_secs,
            max_cost_usd: config.run.max_cost_usd,
            pool: config.run.pool.clone(),
            retry: config.run.retry,
            signature: SignatureView {
                scheme: config.signature.scheme,
                header: config.signature.header.clone(),
                tolerance_secs: config.signature.tolerance_secs,
                has_secret: webhook.signing_secret.is_some(),
            },
            idempotency_header: config.idempotency_header.clone(),
            dedup_window_secs: config.dedup_window_secs,
            max_body_bytes: config.max_body_bytes,
            rate_limit: config.rate_limit,
            previous_url_expires_at: webhook
                .previous_token
                .as_ref()
                .map(|previous| previous.expires_at),
            created_at: webhook.created_at,
            updated_at: webhook.updated_at,
        }
    }
}

/// A new URL token: 256 random bits.
pub fn generate_token() -> String {
    format!(
        "{TOKEN_PREFIX}{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

/// The stored form of a URL token.
pub fn hash_token(token: &str) -> String {
    hex::encode(crate::api::hash_token(token))
}

fn token_hint(token: &str) -> String {
    token.chars().take(TOKEN_HINT_CHARS).collect()
}

fn generate_signing_secret() -> String {
    format!(
        "whsec_{}",
        URL_SAFE_NO_PAD.encode(rand::random::<[u8; 32]>())
    )
}

impl App {
    pub async fn create_webhook(&self, input: WebhookInput) -> ServiceResult<WebhookSecrets> {
        let now = Utc::now();
        let Validated {
            mut webhook,
            generated_secret,
        } = self.validate_webhook(input, None, now).await?;
        let token = generate_token();
        webhook.token_hash = hash_token(&token);
        webhook.config.token_hint = token_hint(&token);
        self.store.insert_webhook(&webhook).await?;
        self.deliveries.clear();
        tracing::info!(webhook.id = %webhook.id, webhook.name = %webhook.name, "webhook created");
        Ok(self.secrets_view(&webhook, &token, generated_secret))
    }

    fn secrets_view(
        &self,
        webhook: &Webhook,
        token: &str,
        signing_secret: Option<String>,
    ) -> WebhookSecrets {
        WebhookSecrets {
            webhook: WebhookView::new(webhook, &self.config.public_url),
            url: format!("{}/hooks/{token}", self.config.public_url),
            signing_secret,
        }
    }

    pub async fn update_webhook(
        &self,
        id_or_name: &str,
        patch: WebhookPatch,
    ) -> ServiceResult<(WebhookView, Option<String>)> {
        let existing = self.find_webhook(id_or_name).await?;
        let input = self.apply_webhook_patch(&existing, patch).await?;
        let Validated {
            webhook,
            generated_secret,
        } = self
            .validate_webhook(input, Some(&existing), Utc::now())
            .await?;
        self.store
            .update_webhook(&webhook)
            .await
            .map_err(|err| match err {
                crate::store::StoreError::NotFound => webhook_not_found(id_or_name),
                other => other.into(),
            })?;
        self.deliveries.clear();
        tracing::info!(webhook.id = %webhook.id, "webhook updated");
        Ok((
            WebhookView::new(&webhook, &self.config.public_url),
            generated_secret,
        ))
    }

    pub async fn delete_webhook(&self, id_or_name: &str) -> ServiceResult<Webhook> {
        let webhook = self.find_webhook(id_or_name).await?;
        if !self.store.delete_webhook(webhook.id).await? {
            return Err(webhook_not_found(id_or_name));
        }
        self.deliveries.clear();
        tracing::info!(webhook.id = %webhook.id, "webhook deleted");
        Ok(webhook)
    }

    /// A new URL (the old one stops working, at once or after `grace_secs`) and, if asked, a
    /// new signing secret.
    pub async fn rotate_webhook(
        &self,
        id_or_name: &str,
        input: RotateInput,
    ) -> ServiceResult<WebhookSecrets> {
        let mut webhook = self.find_webhook(id_or_name).await?;
        let now = Utc::now();
        let grace_secs = input.grace_secs.unwrap_or(0);
        if grace_secs > MAX_ROTATION_GRACE_SECS {
            return Err(ServiceError::invalid(
                "grace_secs",
                format!("must be at most {MAX_ROTATION_GRACE_SECS} (a week)"),
            ));
        }
        webhook.previous_token = (grace_secs > 0).then(|| PreviousToken {
            token_hash: webhook.token_hash.clone(),
            expires_at: now + chrono::Duration::seconds(grace_secs as i64),
        });
        let mut shown_secret = None;
        if let Some(rotation) = input.signing_secret {
            let scheme = webhook.config.signature.scheme;
            let secret = match rotation {
                SecretRotation::Generate(false) => None,
                SecretRotation::Set(secret) => {
                    if secret.len() < 8 || secret.len() > 512 {
                        return Err(ServiceError::invalid(
                            "signing_secret",
                            "must be 8 to 512 characters",
                        ));
                    }
                    Some(secret)
                }
                SecretRotation::Generate(true) => match scheme {
                    SignatureSchemeName::Github | SignatureSchemeName::HmacSha256 => {
                        let secret = generate_signing_secret();
                        shown_secret = Some(secret.clone());
                        Some(secret)
                    }
                    SignatureSchemeName::None => {
                        return Err(ServiceError::invalid(
                            "signing_secret",
                            "this webhook checks no signature (scheme `none`); set \
                             `signature` with update_webhook first",
                        ))
                    }
                    _ => {
                        return Err(ServiceError::invalid(
                            "signing_secret",
                            "Stripe and Slack issue their own secrets: give the new one as a \
                             string",
                        ))
                    }
                },
            };
            if let Some(secret) = secret {
                if scheme == SignatureSchemeName::None {
                    return Err(ServiceError::invalid(
                        "signing_secret",
                        "this webhook checks no signature (scheme `none`)",
                    ));
                }
                webhook.signing_secret = Some(
                    self.sealer
                        .seal(&Webhook::secret_context(webhook.id), secret.as_bytes()),
                );
            }
        }
        let token = generate_token();
        webhook.token_hash = hash_token(&token);
        webhook.config.token_hint = token_hint(&token);
        webhook.updated_at = now;
        self.store.update_webhook(&webhook).await?;
        self.deliveries.clear();
        tracing::info!(webhook.id = %webhook.id, grace_secs, "webhook URL rotated");
        Ok(self.secrets_view(&webhook, &token, shown_secret))
    }

    /// Looks a webhook up by id or, failing that, by name.
    pub async fn find_webhook(&self, id_or_name: &str) -> ServiceResult<Webhook> {
        let found = match id_or_name.parse::<WebhookId>() {
            Ok(id) => self.store.get_webhook(id).await?,
            Err(_) => self.store.get_webhook_by_name(id_or_name).await?,
        };
        found.ok_or_else(|| webhook_not_found(id_or_name))
    }

    pub async fn list_webhooks(&self) -> ServiceResult<Vec<WebhookView>> {
        Ok(self
            .store
            .list_webhooks()
            .await?
            .iter()
            .map(|webhook| WebhookView::new(webhook, &self.config.public_url))
            .collect())
    }

    pub fn webhook_view(&self, webhook: &Webhook) -> WebhookView {
        WebhookView::new(webhook, &self.config.public_url)
    }

    /// Starts a new run from the payload a webhook run came from, through the webhook's current
    /// settings. No signature, rate limit or dedup applies: the caller is an operator.
    pub async fn replay_delivery(&self, run_id: autopilot_proto::RunId) -> ServiceResult<Run> {
        let original = self.get_run(run_id).await?;
        let Some(webhook_id) = original.webhook_id else {
            return Err(ServiceError::invalid(
                "run_id",
                format!(
                    "run {run_id} was not started by a webhook (trigger `{}`); only webhook runs \
                     can be replayed",
                    original.trigger.as_str()
                ),
            ));
        };
        let payload = self.store.get_payload(run_id).await?.ok_or_else(|| {
            ServiceError::Conflict(format!("run {run_id} has no stored payload to replay"))
        })?;
        if payload.truncated {
            return Err(ServiceError::Conflict(format!(
                "run {run_id}'s payload was {} bytes, more than the stored cap, and only its \
                 beginning was kept: it cannot be replayed faithfully",
                payload.body_bytes
            )));
        }
        let webhook = self.store.get_webhook(webhook_id).await?.ok_or_else(|| {
            ServiceError::Conflict(format!(
                "the webhook run {run_id} came from was deleted; nothing to replay it through"
            ))
        })?;
        let live = self.live_webhook(webhook).await?;
        let delivery = crate::webhooks::delivery::Received {
            content_type: Some(payload.content_type.clone()),
            headers: payload.headers.clone(),
            query: payload.query.clone(),
            body: payload.body.clone().into(),
            delivery_id: original.delivery_id.clone(),
        };
        let new =
            crate::webhooks::delivery::build_delivery(&live, delivery, Some(run_id), Utc::now())
                .map_err(|err| ServiceError::Conflict(err.to_string()))?;
        match self.submit_delivery_for_service(new).await? {
            crate::webhooks::writer::Submitted::Created(run) => Ok(*run),
            crate::webhooks::writer::Submitted::Duplicate(id) => self.get_run(id).await,
        }
    }

    /// The request a webhook run came from.
    pub async fn run_payload(
        &self,
        run_id: autopilot_proto::RunId,
    ) -> ServiceResult<crate::webhooks::model::StoredPayload> {
        self.store
            .get_payload(run_id)
            .await?
            .ok_or_else(|| ServiceError::NotFound {
                what: "payload of run",
                id: run_id.to_string(),
            })
    }

    /// Refuses to delete a job that webhooks point at: their deliveries would have nowhere to go.
    pub(crate) async fn ensure_no_webhooks(
        &self,
        job_id: JobId,
        job_name: &str,
    ) -> ServiceResult<()> {
        let webhooks = self.store.webhooks_of_job(job_id).await?;
        if webhooks.is_empty() {
            return Ok(());
        }
        let names: Vec<String> = webhooks.iter().map(|w| format!("`{}`", w.name)).collect();
        Err(ServiceError::Conflict(format!(
            "job `{job_name}` is the target of webhook(s) {}; delete them or point them elsewhere \
             first",
            names.join(", ")
        )))
    }
}

fn webhook_not_found(id: &str) -> ServiceError {
    ServiceError::NotFound {
        what: "webhook",
        id: id.to_owned(),
    }
}
