//! A webhook as clients see it. The URL token and the signing secret are never shown again after
//! they were made; `url_hint` tells which URL is current.

use autopilot_proto::{JobId, WebhookId};
use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::domain::webhook::{Concurrency, RateLimit, SignatureSchemeName, Webhook};
use crate::domain::RunSettings;

#[derive(Serialize, Debug, Clone)]
pub struct WebhookView {
    pub id: WebhookId,
    pub name: String,
    pub description: Option<String>,
    pub enabled: bool,
    pub url_hint: String,
    pub job_id: Option<JobId>,
    pub prompt_template: Option<String>,
    /// The settings of runs without a job.
    #[serde(flatten)]
    pub run: RunSettings,
    pub signature: SignatureView,
    pub idempotency_header: Option<String>,
    pub dedup_window_secs: u64,
    pub max_body_bytes: u64,
    pub rate_limit: RateLimit,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
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
            run: config.run.clone(),
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
            concurrency: config.concurrency.clone(),
            previous_url_expires_at: webhook
                .previous_token
                .as_ref()
                .map(|previous| previous.expires_at),
            created_at: webhook.created_at,
            updated_at: webhook.updated_at,
        }
    }
}
