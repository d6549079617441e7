//! Checking a webhook description as a whole, on create and on update (a patch is applied to the
//! stored webhook's description first, then checked like a new one).

use chrono::{DateTime, Utc};

use autopilot_proto::WebhookId;

use super::input::{ConcurrencyInput, RateLimitInput, SignatureInput, WebhookInput, WebhookPatch};
use crate::app::App;
use crate::domain::input::validate_name;
use crate::domain::signature::{DEFAULT_HMAC_HEADER, DEFAULT_TOLERANCE_SECS};
use crate::domain::template::{Template, MAX_TEMPLATE_BYTES};
use crate::domain::webhook::{
    Concurrency, RateLimit, SignatureConfig, SignatureSchemeName, Webhook, WebhookConfig,
};
use crate::domain::{JobKind, RetryPolicy, RunSettingsInput, ServiceError, ServiceResult};
use crate::services::jobs;
use crate::tokens;

pub const DEFAULT_MAX_BODY_BYTES: u64 = 1024 * 1024;
pub const MAX_MAX_BODY_BYTES: u64 = 16 * 1024 * 1024;
pub const DEFAULT_DEDUP_WINDOW_SECS: u64 = 24 * 3600;
const MAX_DEDUP_WINDOW_SECS: u64 = 30 * 24 * 3600;
pub const DEFAULT_RATE_PER_SECOND: f64 = 100.0;
pub const DEFAULT_BURST: u32 = 200;

/// A checked header name, lower case.
fn header_name(field: &str, name: &str) -> ServiceResult<String> {
    let name = name.trim();
    if name.is_empty()
        || name.len() > 100
        || axum::http::HeaderName::from_bytes(name.as_bytes()).is_err()
    {
        return Err(ServiceError::invalid(
            field,
            format!("`{name}` is not a valid HTTP header name"),
        ));
    }
    Ok(name.to_ascii_lowercase())
}

/// Signature settings as validated: the settings, and a new plaintext secret to seal.
struct SignatureChoice {
    config: SignatureConfig,
    secret: Option<String>,
    /// The secret was generated here (and is shown once).
    generated: bool,
}

impl SignatureChoice {
    fn keep(config: SignatureConfig) -> Self {
        SignatureChoice {
            config,
            secret: None,
            generated: false,
        }
    }
}

/// The outcome of validating an input: the webhook, and a signing secret generated for it.
pub(super) struct Validated {
    pub(super) webhook: Webhook,
    pub(super) generated_secret: Option<String>,
}

/// Checks a whole webhook description. `existing` supplies the id, tokens, secret and
/// creation time on update.
pub(super) async fn validate(
    app: &App,
    input: WebhookInput,
    existing: Option<&Webhook>,
    now: DateTime<Utc>,
) -> ServiceResult<Validated> {
    let name = validate_name(&input.name)?;
    let job = match input.job.as_deref().map(str::trim) {
        Some(job) if !job.is_empty() => {
            Some(jobs::find(app, job).await.map_err(|err| match err {
                ServiceError::NotFound { .. } => ServiceError::invalid(
                    "job",
                    format!("no job `{job}`; list_jobs shows the jobs (give an id or a name)"),
                ),
                other => other,
            })?)
        }
        _ => None,
    };
    let prompt_template = input.prompt_template.filter(|t| !t.trim().is_empty());
    if let Some(template) = &prompt_template {
        if template.len() > MAX_TEMPLATE_BYTES {
            return Err(ServiceError::invalid(
                "prompt_template",
                format!(
                    "is {} bytes; the limit is {MAX_TEMPLATE_BYTES}",
                    template.len()
                ),
            ));
        }
        Template::parse(template)
            .map_err(|err| ServiceError::invalid("prompt_template", err.to_string()))?;
    }
    match &job {
        None if prompt_template.is_none() => {
            return Err(ServiceError::invalid(
                "prompt_template",
                "a webhook needs a `prompt_template` (e.g. \"Triage this issue: \
                 {{payload.issue.title}}\"), or a `job` whose settings its runs take",
            ))
        }
        Some(job) if job.kind == JobKind::Shell && prompt_template.is_some() => {
            return Err(ServiceError::invalid(
                "prompt_template",
                format!(
                    "job `{}` is a shell job: its runs get the request body on standard \
                     input, and a prompt template does not apply; remove it",
                    job.name
                ),
            ))
        }
        _ => {}
    }
    if let Some(job) = &job {
        if let Some(field) = input.run.first_given() {
            return Err(ServiceError::invalid(
                field,
                format!(
                    "runs of this webhook take job `{}`'s settings; change the job, or \
                     remove `job` to give the webhook settings of its own",
                    job.name
                ),
            ));
        }
    }
    // The settings of runs without a job (kept, unused, while the webhook points at one).
    let run = input.run.resolve(
        JobKind::Claude,
        existing.map_or_else(RetryPolicy::default, |webhook| webhook.config.run.retry),
    )?;
    crate::services::tools::check_tools(app, &run).await?;

    let SignatureChoice {
        config: signature,
        secret: signing_secret,
        generated,
    } = validate_signature(input.signature, existing)?;
    let generated_secret = signing_secret.clone().filter(|_| generated);
    let checks_signatures = signature.scheme != SignatureSchemeName::None;
    let idempotency_header = input
        .idempotency_header
        .filter(|h| !h.trim().is_empty())
        .map(|h| header_name("idempotency_header", &h))
        .transpose()?;
    let dedup_window_secs = input.dedup_window_secs.unwrap_or(DEFAULT_DEDUP_WINDOW_SECS);
    if !(1..=MAX_DEDUP_WINDOW_SECS).contains(&dedup_window_secs) {
        return Err(ServiceError::invalid(
            "dedup_window_secs",
            format!("must be between 1 and {MAX_DEDUP_WINDOW_SECS} (30 days)"),
        ));
    }
    let max_body_bytes = input.max_body_bytes.unwrap_or(DEFAULT_MAX_BODY_BYTES);
    if !(1..=MAX_MAX_BODY_BYTES).contains(&max_body_bytes) {
        return Err(ServiceError::invalid(
            "max_body_bytes",
            format!("must be between 1 and {MAX_MAX_BODY_BYTES} (16 MiB)"),
        ));
    }
    let rate_limit = match input.rate_limit {
        None => RateLimit {
            per_second: DEFAULT_RATE_PER_SECOND,
            burst: DEFAULT_BURST,
        },
        Some(limit) => {
            if !limit.per_second.is_finite()
                || limit.per_second <= 0.0
                || limit.per_second > 1_000_000.0
            {
                return Err(ServiceError::invalid(
                    "rate_limit.per_second",
                    "must be a number above 0 and at most 1000000",
                ));
            }
            let burst = limit
                .burst
                .unwrap_or_else(|| (limit.per_second * 2.0).ceil().max(1.0) as u32);
            if !(1..=1_000_000).contains(&burst) {
                return Err(ServiceError::invalid(
                    "rate_limit.burst",
                    "must be between 1 and 1000000",
                ));
            }
            RateLimit {
                per_second: limit.per_second,
                burst,
            }
        }
    };
    let concurrency = input.concurrency.map(validate_concurrency).transpose()?;
    let id = existing.map_or_else(WebhookId::new, |webhook| webhook.id);
    let sealed_secret = signing_secret.map(|secret| {
        app.sealer
            .seal(&Webhook::secret_context(id), secret.as_bytes())
    });
    let webhook = Webhook {
        id,
        name,
        enabled: input.enabled.unwrap_or(true),
        token_hash: existing.map_or_else(String::new, |w| w.token_hash.clone()),
        previous_token: existing.and_then(|w| w.previous_token.clone()),
        job_id: job.as_ref().map(|job| job.id),
        config: WebhookConfig {
            description: input.description.filter(|d| !d.trim().is_empty()),
            prompt_template,
            run,
            signature,
            idempotency_header,
            dedup_window_secs,
            max_body_bytes,
            rate_limit,
            token_hint: existing.map_or_else(String::new, |w| w.config.token_hint.clone()),
            concurrency,
        },
        // Without a new secret, the stored one stays (and none is kept for scheme `none`).
        signing_secret: sealed_secret.or_else(|| {
            existing
                .filter(|_| checks_signatures)
                .and_then(|w| w.signing_secret.clone())
        }),
        created_at: existing.map_or(now, |w| w.created_at),
        updated_at: now,
    };
    Ok(Validated {
        webhook,
        generated_secret,
    })
}

/// The signature settings and the new plaintext secret, if any. A secret is kept on update
/// unless the input sets or needs a new one.
fn validate_signature(
    input: Option<SignatureInput>,
    existing: Option<&Webhook>,
) -> ServiceResult<SignatureChoice> {
    let Some(input) = input else {
        let config = match existing {
            Some(webhook) => webhook.config.signature.clone(),
            None => SignatureConfig {
                scheme: SignatureSchemeName::None,
                header: None,
                tolerance_secs: DEFAULT_TOLERANCE_SECS,
            },
        };
        return Ok(SignatureChoice::keep(config));
    };
    let tolerance_secs = input.tolerance_secs.unwrap_or(DEFAULT_TOLERANCE_SECS);
    if !(1..=86_400).contains(&tolerance_secs) {
        return Err(ServiceError::invalid(
            "signature.tolerance_secs",
            "must be between 1 and 86400",
        ));
    }
    let header = match (input.scheme, input.header.as_deref()) {
        (SignatureSchemeName::HmacSha256, Some(header)) => {
            Some(header_name("signature.header", header)?)
        }
        (SignatureSchemeName::HmacSha256, None) => Some(DEFAULT_HMAC_HEADER.to_owned()),
        (_, Some(_)) => {
            return Err(ServiceError::invalid(
                "signature.header",
                "only the `hmac_sha256` scheme takes a header; github, stripe and slack use \
                 their own",
            ))
        }
        (_, None) => None,
    };
    let config = SignatureConfig {
        scheme: input.scheme,
        header,
        tolerance_secs,
    };
    if input.scheme == SignatureSchemeName::None {
        if input.secret.is_some() {
            return Err(ServiceError::invalid(
                "signature.secret",
                "scheme `none` checks no signature; choose github, stripe, slack or \
                 hmac_sha256 to use a secret",
            ));
        }
        return Ok(SignatureChoice::keep(config));
    }
    if let Some(secret) = input.secret {
        if secret.len() < 8 || secret.len() > 512 {
            return Err(ServiceError::invalid(
                "signature.secret",
                "must be 8 to 512 characters",
            ));
        }
        return Ok(SignatureChoice {
            config,
            secret: Some(secret),
            generated: false,
        });
    }
    let keeps_secret = existing.is_some_and(|webhook| {
        webhook.signing_secret.is_some() && webhook.config.signature.scheme == input.scheme
    });
    if keeps_secret {
        return Ok(SignatureChoice::keep(config));
    }
    match input.scheme {
        SignatureSchemeName::Github | SignatureSchemeName::HmacSha256 => Ok(SignatureChoice {
            config,
            secret: Some(tokens::mint(tokens::SIGNING_SECRET_PREFIX)),
            generated: true,
        }),
        scheme => Err(ServiceError::invalid(
            "signature.secret",
            format!(
                "{} issues the signing secret: copy it from there into `signature.secret`",
                match scheme {
                    SignatureSchemeName::Stripe => "Stripe (the endpoint's `whsec_…` secret)",
                    _ => "Slack (the app's Signing Secret)",
                }
            ),
        )),
    }
}

/// Checks a concurrency key (a template of the delivery) and its limit.
fn validate_concurrency(input: ConcurrencyInput) -> ServiceResult<Concurrency> {
    let template = Template::parse(input.key.trim())
        .map_err(|err| ServiceError::invalid("concurrency.key", err.to_string()))?;
    let roots = template.roots();
    if roots.is_empty() {
        return Err(ServiceError::invalid(
            "concurrency.key",
            "name a value of the delivery, e.g. `{{payload.repository.full_name}}`: a key \
             without one is the same for every delivery",
        ));
    }
    if let Some(root) = roots
        .iter()
        .find(|root| !["payload", "headers", "query"].contains(root))
    {
        return Err(ServiceError::invalid(
            "concurrency.key",
            format!("`{root}` is not a value of the delivery; use `payload`, `headers` or `query`"),
        ));
    }
    let limit = input.limit.unwrap_or(1);
    if !(1..=1000).contains(&limit) {
        return Err(ServiceError::invalid(
            "concurrency.limit",
            "must be between 1 and 1000",
        ));
    }
    Ok(Concurrency {
        key: input.key.trim().to_owned(),
        limit,
        newest_wins: input.newest_wins.unwrap_or(false),
    })
}

/// The input that describes `webhook` with `patch` applied, so it can be checked as a whole.
pub(super) fn apply_patch(webhook: &Webhook, patch: WebhookPatch) -> WebhookInput {
    let config = &webhook.config;
    let job = webhook.job_id.map(|job_id| job_id.to_string());
    let own = job.is_none();
    let mut input = WebhookInput {
        name: webhook.name.clone(),
        description: config.description.clone(),
        enabled: Some(webhook.enabled),
        prompt_template: config.prompt_template.clone(),
        job,
        signature: None,
        idempotency_header: config.idempotency_header.clone(),
        dedup_window_secs: Some(config.dedup_window_secs),
        max_body_bytes: Some(config.max_body_bytes),
        rate_limit: Some(RateLimitInput {
            per_second: config.rate_limit.per_second,
            burst: Some(config.rate_limit.burst),
        }),
        concurrency: config.concurrency.as_ref().map(|c| ConcurrencyInput {
            key: c.key.clone(),
            limit: Some(c.limit),
            newest_wins: Some(c.newest_wins),
        }),
        run: if own {
            RunSettingsInput::from(&config.run)
        } else {
            RunSettingsInput::default()
        },
    };
    // Pointing the webhook at a job drops its own run settings; leaving the job restores
    // the defaults unless the patch sets them.
    if let Some(job) = patch.job {
        if job.is_some() {
            input.run = RunSettingsInput::default();
        }
        input.job = job;
    }
    macro_rules! set {
        ($($field:ident),+) => { $(if let Some(value) = patch.$field { input.$field = value.into(); })+ };
    }
    set!(
        name,
        enabled,
        signature,
        dedup_window_secs,
        max_body_bytes,
        rate_limit,
        description,
        prompt_template,
        idempotency_header,
        concurrency
    );
    input.run.apply(patch.run);
    input
}
