//! A webhook as clients describe it ([`WebhookInput`]), change it ([`WebhookPatch`]) or rotate
//! its secrets ([`RotateInput`]).

use schemars::JsonSchema;
use serde::Deserialize;

use crate::domain::input::{flattened, nullable};
use crate::domain::webhook::SignatureSchemeName;
use crate::domain::{RunSettingsInput, RunSettingsPatch};

/// A webhook as clients create it. Unknown fields are refused by name.
#[derive(Deserialize, Debug, Default, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    /// Unique name; webhooks can be addressed by it.
    pub name: String,
    /// What the webhook is for, for people reading the list.
    #[serde(default)]
    pub description: Option<String>,
    /// Default true. A disabled webhook answers 404, like an unknown URL.
    #[serde(default)]
    pub enabled: Option<bool>,
    /// What each run is asked. `{{payload.a.b}}`, `{{payload.items.0.name}}`,
    /// `{{headers.x-github-event}}`, `{{query.name}}` and `{{payload}}` (the whole body) are
    /// filled in from the delivery, marked as untrusted data; a `!` before the closing braces
    /// makes a value required (`{{payload.ref!}}`). Needed unless `job` is given.
    #[serde(default)]
    pub prompt_template: Option<String>,
    /// A job (id or name) whose settings the runs take, its prompt followed by the rendered
    /// template (or the whole payload). A shell job gets the body on standard input. The run
    /// settings below apply only without a job.
    #[serde(default)]
    pub job: Option<String>,
    /// How deliveries prove they come from the sender.
    #[serde(default)]
    pub signature: Option<SignatureInput>,
    /// Header carrying a delivery id, tried before X-GitHub-Delivery and Idempotency-Key: a
    /// delivery id seen again within the window starts nothing new.
    #[serde(default)]
    pub idempotency_header: Option<String>,
    /// How long a delivery id is remembered, in seconds (default 86400).
    #[serde(default)]
    pub dedup_window_secs: Option<u64>,
    /// Largest accepted body in bytes (default 1048576).
    #[serde(default)]
    pub max_body_bytes: Option<u64>,
    /// Deliveries accepted per second (token bucket; default 100 a second, bursts of 200).
    #[serde(default)]
    pub rate_limit: Option<RateLimitInput>,
    /// Runs of deliveries that share a key: at most `limit` at once, or the newest alone.
    #[serde(default)]
    pub concurrency: Option<ConcurrencyInput>,
    #[serde(flatten, deserialize_with = "flattened")]
    pub run: RunSettingsInput,
}

/// How runs of deliveries with the same key share the fleet.
#[derive(Deserialize, Debug, Default, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ConcurrencyInput {
    /// A template of the delivery naming what runs compete for, e.g.
    /// `{{payload.repository.full_name}}` or `{{payload.pull_request.number}}` (values render
    /// as they are, not as marked data). A delivery that renders it empty is not limited.
    pub key: String,
    /// Most runs of one key at once; the others wait, queued (1 to 1000; default 1).
    #[serde(default)]
    pub limit: Option<u32>,
    /// A newer delivery cancels the older runs of its key, queued or running (default false).
    #[serde(default)]
    pub newest_wins: Option<bool>,
}

#[derive(Deserialize, Debug, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct SignatureInput {
    /// `github` (X-Hub-Signature-256), `stripe` (Stripe-Signature), `slack`
    /// (X-Slack-Signature), `hmac_sha256` (a header of your choice) or `none`.
    pub scheme: SignatureSchemeName,
    /// The signing secret. Stripe and Slack issue it (copy it from there); for github and
    /// hmac_sha256 one is generated and shown once when left out.
    #[serde(default)]
    pub secret: Option<String>,
    /// The header that carries the signature, for `hmac_sha256` (default X-Signature-256).
    #[serde(default)]
    pub header: Option<String>,
    /// Largest accepted clock difference for stripe and slack, in seconds (default 300).
    #[serde(default)]
    pub tolerance_secs: Option<u64>,
}

#[derive(Deserialize, Debug, Clone, Copy, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RateLimitInput {
    /// Deliveries per second (default 100).
    pub per_second: f64,
    /// Deliveries accepted at once (default twice the rate).
    #[serde(default)]
    pub burst: Option<u32>,
}

/// A partial update: a field left out keeps its value, `null` clears an optional one.
#[derive(Deserialize, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WebhookPatch {
    /// New unique name.
    pub name: Option<String>,
    /// `null` clears it.
    #[serde(default, deserialize_with = "nullable")]
    pub description: Option<Option<String>>,
    /// `false` pauses the webhook (its URL answers 404), `true` resumes it.
    pub enabled: Option<bool>,
    /// New prompt template (see create_webhook); `null` removes it (the webhook then needs a
    /// `job`).
    #[serde(default, deserialize_with = "nullable")]
    pub prompt_template: Option<Option<String>>,
    /// A job id or name; `null` gives the webhook run settings of its own again.
    #[serde(default, deserialize_with = "nullable")]
    pub job: Option<Option<String>>,
    /// New signature check; the secret is kept when the scheme stays the same and none is given.
    pub signature: Option<SignatureInput>,
    /// Header carrying a delivery id; `null` goes back to X-GitHub-Delivery and
    /// Idempotency-Key.
    #[serde(default, deserialize_with = "nullable")]
    pub idempotency_header: Option<Option<String>>,
    /// How long a delivery id is remembered, in seconds.
    pub dedup_window_secs: Option<u64>,
    /// Largest accepted body in bytes.
    pub max_body_bytes: Option<u64>,
    /// Deliveries accepted per second (replaces the whole limit).
    pub rate_limit: Option<RateLimitInput>,
    /// Replaces the whole concurrency setting; `null` removes it.
    #[serde(default, deserialize_with = "nullable")]
    pub concurrency: Option<Option<ConcurrencyInput>>,
    #[serde(flatten, deserialize_with = "flattened")]
    pub run: RunSettingsPatch,
}

/// What a rotation changes.
#[derive(Deserialize, Debug, Default, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RotateInput {
    /// The old URL keeps working this many seconds (default 0: it stops at once; at most a
    /// week).
    #[serde(default)]
    pub grace_secs: Option<u64>,
    /// Also replace the signing secret: `true` generates one (github, hmac_sha256), a string
    /// sets it (stripe, slack).
    #[serde(default)]
    pub signing_secret: Option<SecretRotation>,
}

#[derive(Deserialize, Debug, JsonSchema)]
#[serde(untagged)]
pub enum SecretRotation {
    Generate(bool),
    Set(String),
}
