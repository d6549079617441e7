//! Webhooks: create, change, delete, rotate their secrets, look them up, and the runs their
//! deliveries start: recording deliveries (for the intake's writer and for replays) and replaying
//! one. What a delivery turns into is in [`delivery`]; the HTTP side of deliveries (cache, rate
//! limits, batched writes) is the webhook intake, `crate::hooks`.

pub mod delivery;
mod input;
mod validate;
mod view;

pub use input::{
    ConcurrencyInput, RateLimitInput, RotateInput, SecretRotation, SignatureInput, WebhookInput,
    WebhookPatch,
};
pub use validate::{
    DEFAULT_BURST, DEFAULT_DEDUP_WINDOW_SECS, DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE_PER_SECOND,
    MAX_MAX_BODY_BYTES,
};
pub use view::{SignatureView, WebhookSecrets, WebhookView};

use std::sync::Arc;

use autopilot_proto::{JobId, RunId, RunStatus, Trigger, WebhookId};
use chrono::Utc;

use crate::app::App;
use crate::domain::webhook::{
    DeliveryOutcome, NewDelivery, PreviousToken, SignatureSchemeName, StoredPayload, Webhook,
};
use crate::domain::{Run, ServiceError, ServiceResult};
use crate::services::{dispatch, runs, traces};
use crate::store::StoreError;
use crate::tokens;
use validate::Validated;

const MAX_ROTATION_GRACE_SECS: u64 = 7 * 24 * 3600;
/// Characters of the URL token kept to recognise it.
const TOKEN_HINT_CHARS: usize = 8;

pub async fn create(app: &App, input: WebhookInput) -> ServiceResult<WebhookSecrets> {
    let Validated {
        mut webhook,
        generated_secret,
    } = validate::validate(app, input, None, Utc::now()).await?;
    let token = new_url_token(&mut webhook);
    app.store.insert_webhook(&webhook).await?;
    app.notify_webhooks_changed();
    tracing::info!(webhook.id = %webhook.id, webhook.name = %webhook.name, "webhook created");
    Ok(secrets_view(app, &webhook, &token, generated_secret))
}

/// Changes a webhook; also returns a signing secret generated for it (shown once).
pub async fn update(
    app: &App,
    id_or_name: &str,
    patch: WebhookPatch,
) -> ServiceResult<(WebhookView, Option<String>)> {
    let existing = find(app, id_or_name).await?;
    let input = validate::apply_patch(&existing, patch);
    let Validated {
        webhook,
        generated_secret,
    } = validate::validate(app, input, Some(&existing), Utc::now()).await?;
    app.store
        .update_webhook(&webhook)
        .await
        .map_err(|err| match err {
            StoreError::NotFound => not_found(id_or_name),
            other => other.into(),
        })?;
    app.notify_webhooks_changed();
    tracing::info!(webhook.id = %webhook.id, "webhook updated");
    Ok((view(app, &webhook), generated_secret))
}

pub async fn delete(app: &App, id_or_name: &str) -> ServiceResult<Webhook> {
    let webhook = find(app, id_or_name).await?;
    if !app.store.delete_webhook(webhook.id).await? {
        return Err(not_found(id_or_name));
    }
    app.notify_webhooks_changed();
    tracing::info!(webhook.id = %webhook.id, "webhook deleted");
    crate::services::memory::forget(
        app,
        &crate::domain::memory::MemoryScope::Webhook(webhook.id),
    )
    .await;
    Ok(webhook)
}

/// A new URL (the old one stops working, at once or after `grace_secs`) and, if asked, a new
/// signing secret.
pub async fn rotate(
    app: &App,
    id_or_name: &str,
    input: RotateInput,
) -> ServiceResult<WebhookSecrets> {
    let mut webhook = find(app, id_or_name).await?;
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
                    let secret = tokens::mint(tokens::SIGNING_SECRET_PREFIX);
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
                app.sealer
                    .seal(&Webhook::secret_context(webhook.id), secret.as_bytes()),
            );
        }
    }
    let token = new_url_token(&mut webhook);
    webhook.updated_at = now;
    app.store.update_webhook(&webhook).await?;
    app.notify_webhooks_changed();
    tracing::info!(webhook.id = %webhook.id, grace_secs, "webhook URL rotated");
    Ok(secrets_view(app, &webhook, &token, shown_secret))
}

/// Gives the webhook a new URL token, returned (it is shown once); only its digest is kept.
fn new_url_token(webhook: &mut Webhook) -> String {
    let token = tokens::mint(tokens::WEBHOOK_URL_PREFIX);
    webhook.token_hash = tokens::digest_hex(&token);
    webhook.config.token_hint = token.chars().take(TOKEN_HINT_CHARS).collect();
    token
}

fn secrets_view(
    app: &App,
    webhook: &Webhook,
    token: &str,
    signing_secret: Option<String>,
) -> WebhookSecrets {
    WebhookSecrets {
        webhook: view(app, webhook),
        url: format!("{}/hooks/{token}", app.config.public_url),
        signing_secret,
    }
}

/// Looks a webhook up by id or, failing that, by name.
pub async fn find(app: &App, id_or_name: &str) -> ServiceResult<Webhook> {
    let found = match id_or_name.parse::<WebhookId>() {
        Ok(id) => app.store.get_webhook(id).await?,
        Err(_) => app.store.get_webhook_by_name(id_or_name).await?,
    };
    found.ok_or_else(|| not_found(id_or_name))
}

pub async fn list(app: &App) -> ServiceResult<Vec<WebhookView>> {
    Ok(app
        .store
        .list_webhooks()
        .await?
        .iter()
        .map(|webhook| view(app, webhook))
        .collect())
}

pub fn view(app: &App, webhook: &Webhook) -> WebhookView {
    WebhookView::new(webhook, &app.config.public_url)
}

/// Stores deliveries in one durable transaction (see `Store::record_deliveries`; the caller
/// records it in the runs' traces, `traces::stored`); returns one
/// outcome per delivery. The runs created are not sent yet: answer first, then hand them to
/// [`send_created`].
pub async fn record_deliveries(
    app: &App,
    deliveries: &[NewDelivery],
) -> ServiceResult<Vec<DeliveryOutcome>> {
    let outcomes = app.store.record_deliveries(deliveries, Utc::now()).await?;
    let created = outcomes
        .iter()
        .filter(|outcome| **outcome == DeliveryOutcome::Created)
        .count();
    app.metrics.run_created(Trigger::Webhook, created as u64);
    Ok(outcomes)
}

/// Sends the runs [`record_deliveries`] created that may start now (marked dispatched), on a
/// task of its own so the caller goes on, and wakes the dispatcher when others (`waiting`) wait
/// for an earlier run of their job.
pub fn send_created(app: &Arc<App>, dispatched: Vec<Run>, waiting: bool) {
    if waiting {
        app.dispatcher_wake.notify_one();
    }
    let winners: Vec<Run> = dispatched
        .iter()
        .filter(|run| {
            run.settings
                .concurrency
                .as_ref()
                .is_some_and(|c| c.newest_wins)
        })
        .cloned()
        .collect();
    dispatch::publish_all_dispatched(app, dispatched);
    if !winners.is_empty() {
        let app = Arc::clone(app);
        tokio::spawn(async move {
            for run in winners {
                if let Err(err) = supersede_older(&app, &run).await {
                    tracing::warn!(run.id = %run.id, error = %err, "cancelling the older runs of a concurrency key failed");
                }
            }
        });
    }
}

/// A delivery whose key has `newest_wins` was stored as run `newer`: the older runs of the same
/// webhook and key, queued or running, are cancelled.
async fn supersede_older(app: &App, newer: &Run) -> ServiceResult<()> {
    let Some(key) = newer.settings.concurrency.as_ref().map(|c| &c.key) else {
        return Ok(());
    };
    let active = app
        .store
        .runs_in_status(&RunStatus::ACTIVE, newer.job_id)
        .await?;
    for older in active.iter().filter(|run| {
        run.id < newer.id
            && run.webhook_id == newer.webhook_id
            && run.status != RunStatus::Cancelling
            && run.settings.concurrency.as_ref().map(|c| &c.key) == Some(key)
    }) {
        tracing::info!(run.id = %older.id, newer.id = %newer.id, "superseded by a newer delivery of its key");
        match runs::supersede(app, older.id, newer.id).await {
            // It ended meanwhile: nothing to stop.
            Ok(_) | Err(ServiceError::Conflict(_)) => {}
            Err(err) => return Err(err),
        }
    }
    Ok(())
}

/// Starts a new run from the payload a webhook run came from, through the webhook's current
/// settings. No signature, rate limit or dedup applies: the caller is an operator.
pub async fn replay(app: &Arc<App>, run_id: RunId) -> ServiceResult<Run> {
    let original = runs::get(app, run_id).await?;
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
    let payload = app.store.get_payload(run_id).await?.ok_or_else(|| {
        ServiceError::Conflict(format!("run {run_id} has no stored payload to replay"))
    })?;
    if payload.truncated {
        return Err(ServiceError::Conflict(format!(
            "run {run_id}'s payload was {} bytes, more than the stored cap, and only its \
             beginning was kept: it cannot be replayed faithfully",
            payload.body_bytes
        )));
    }
    let webhook = app.store.get_webhook(webhook_id).await?.ok_or_else(|| {
        ServiceError::Conflict(format!(
            "the webhook run {run_id} came from was deleted; nothing to replay it through"
        ))
    })?;
    let received = delivery::Received {
        content_type: Some(payload.content_type),
        headers: payload.headers,
        query: payload.query,
        body: payload.body.into(),
        delivery_id: original.delivery_id,
    };
    start_run(app, webhook, received, Some(run_id)).await
}

/// Starts a run from a test payload an operator sends (a JSON body), as if it had been
/// delivered to the webhook's URL; no signature, rate limit or dedup applies.
pub async fn send_test(app: &Arc<App>, id_or_name: &str, body: &str) -> ServiceResult<Run> {
    let webhook = find(app, id_or_name).await?;
    if let Err(err) = serde_json::from_str::<serde_json::Value>(body) {
        return Err(ServiceError::invalid(
            "payload",
            format!("the test payload is not JSON: {err}"),
        ));
    }
    let received = delivery::Received {
        content_type: Some("application/json".to_owned()),
        headers: vec![("content-type".to_owned(), "application/json".to_owned())],
        query: Vec::new(),
        body: bytes::Bytes::copy_from_slice(body.as_bytes()),
        delivery_id: None,
    };
    start_run(app, webhook, received, None).await
}

/// Builds and records the run of a delivery an operator made (a replay or a test).
async fn start_run(
    app: &Arc<App>,
    webhook: Webhook,
    received: delivery::Received,
    replay_of: Option<RunId>,
) -> ServiceResult<Run> {
    let live = delivery::live(app, webhook).await?;
    let new = delivery::build_delivery(&live, received, replay_of, Utc::now())
        .map_err(|err| ServiceError::Conflict(err.to_string()))?;
    // An operator's delivery has no delivery id window, so it always creates its run.
    let storing = std::time::SystemTime::now();
    match record_deliveries(app, std::slice::from_ref(&new)).await?[..] {
        [DeliveryOutcome::Duplicate(id)] => runs::get(app, id).await,
        _ => {
            traces::stored([&new.run], storing);
            let waiting = new.run.dispatched_at.is_none();
            let dispatched = (!waiting).then(|| new.run.clone());
            send_created(app, dispatched.into_iter().collect(), waiting);
            Ok(new.run)
        }
    }
}

/// The request a webhook run came from.
pub async fn payload(app: &App, run_id: RunId) -> ServiceResult<StoredPayload> {
    app.store
        .get_payload(run_id)
        .await?
        .ok_or_else(|| ServiceError::NotFound {
            what: "payload of run",
            id: run_id.to_string(),
        })
}

/// Refuses to delete a job that webhooks point at: their deliveries would have nowhere to go.
pub(crate) async fn ensure_none_target(
    app: &App,
    job_id: JobId,
    job_name: &str,
) -> ServiceResult<()> {
    let webhooks = app.store.webhooks_of_job(job_id).await?;
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

fn not_found(id: &str) -> ServiceError {
    ServiceError::NotFound {
        what: "webhook",
        id: id.to_owned(),
    }
}
