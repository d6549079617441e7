//! Webhooks as the store keeps them, and what a delivery leaves behind.

use autopilot_proto::{JobId, NewRunEvent, RunId, WebhookId};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use super::run::Run;
use super::settings::RunSettings;

/// A secret URL that turns HTTP deliveries into runs.
#[derive(Clone, PartialEq, Debug)]
pub struct Webhook {
    pub id: WebhookId,
    pub name: String,
    pub enabled: bool,
    /// SHA-256 (hex) of the URL token; the token itself is shown once and never stored.
    pub token_hash: String,
    /// After a rotation with a grace period, the old token keeps working until then.
    pub previous_token: Option<PreviousToken>,
    /// Runs take this job's settings (and its prompt, followed by the rendered template).
    pub job_id: Option<JobId>,
    pub config: WebhookConfig,
    /// The signing secret, sealed (see `crate::seal`); `None` without signature checks.
    pub signing_secret: Option<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
}

#[derive(Clone, PartialEq, Eq, Debug)]
pub struct PreviousToken {
    pub token_hash: String,
    pub expires_at: DateTime<Utc>,
}

impl Webhook {
    /// The context a signing secret is sealed for: it opens for this webhook only.
    pub fn secret_context(id: WebhookId) -> String {
        format!("webhook:{id}:signing_secret")
    }

    /// Name of the workspace of runs that use the webhook's own settings.
    pub fn workspace(&self) -> String {
        format!("webhook-{}", self.id)
    }
}

/// Everything about a webhook that is not looked up by the store, kept as one JSON document.
#[derive(Clone, PartialEq, Debug, Serialize, Deserialize)]
pub struct WebhookConfig {
    pub description: Option<String>,
    pub prompt_template: Option<String>,
    /// Settings of runs when the webhook does not point at a job.
    pub run: RunSettings,
    pub signature: SignatureConfig,
    /// Header that carries the delivery id, tried before `X-GitHub-Delivery` and
    /// `Idempotency-Key`.
    pub idempotency_header: Option<String>,
    pub dedup_window_secs: u64,
    pub max_body_bytes: u64,
    pub rate_limit: RateLimit,
    /// The first characters of the current token, so a user can tell which URL is which.
    pub token_hint: String,
    /// Runs whose deliveries share a key: how many at once, or the newest alone.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<Concurrency>,
}

/// Runs of a webhook whose deliveries render the same `key` run at most `limit` at a time (the
/// others wait, queued); with `newest_wins`, a newer delivery cancels the older runs of its key
/// instead, queued or running (a pull request's newest push is the one worth reviewing).
#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
pub struct Concurrency {
    /// A template of the delivery, e.g. `{{payload.repository.full_name}}`; a delivery that
    /// renders it empty is not limited.
    pub key: String,
    pub limit: u32,
    pub newest_wins: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum SignatureSchemeName {
    None,
    Github,
    Stripe,
    Slack,
    HmacSha256,
}

impl SignatureSchemeName {
    pub const NAMES: [&'static str; 5] = ["none", "github", "stripe", "slack", "hmac_sha256"];
}

#[derive(Clone, PartialEq, Eq, Debug, Serialize, Deserialize)]
pub struct SignatureConfig {
    pub scheme: SignatureSchemeName,
    /// The header of `hmac_sha256` (lower case).
    pub header: Option<String>,
    /// Largest accepted clock difference for schemes with a timestamp (Stripe, Slack).
    pub tolerance_secs: u64,
}

#[derive(Clone, Copy, PartialEq, Debug, Serialize, Deserialize)]
pub struct RateLimit {
    /// Deliveries per second, refilled continuously.
    pub per_second: f64,
    /// Deliveries accepted at once from a full bucket.
    pub burst: u32,
}

/// The request a webhook run came from, kept with the run (size-capped) so it can be shown and
/// replayed. Credentials (`Authorization`, cookies) are never kept.
#[derive(Clone, PartialEq, Debug)]
pub struct StoredPayload {
    pub run_id: RunId,
    pub content_type: String,
    pub headers: Vec<(String, String)>,
    pub query: Vec<(String, String)>,
    pub body: Vec<u8>,
    /// Size of the body as received.
    pub body_bytes: u64,
    /// The body was longer than the stored cap; a truncated payload cannot be replayed.
    pub truncated: bool,
}

/// One accepted delivery, written with others in one transaction.
#[derive(Clone, Debug)]
pub struct NewDelivery {
    /// The run to create (`webhook_id` and, when the sender gave one, `delivery_id` set).
    pub run: Run,
    pub queued_event: NewRunEvent,
    pub payload: StoredPayload,
    /// With a delivery id: it is remembered until then, and a repeat returns this run's id.
    pub dedup_until: Option<DateTime<Utc>>,
}

/// What recording a delivery did.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum DeliveryOutcome {
    Created,
    /// The delivery id was seen within its window: nothing new, this is the earlier run.
    Duplicate(RunId),
}
