//! The webhook tools: create, list, read, change, delete, rotate a webhook's secret URL, and
//! replay a delivery. Like every tool, they only call the services.

use std::sync::Arc;

use rmcp::model::JsonObject;
use rmcp::service::RequestContext;
use rmcp::RoleServer;
use schemars::JsonSchema;
use serde::Deserialize;
use serde_json::{json, Value};

use super::runs::{finish_run_call, waited_run_schema};
use super::{
    input, object, parse, parse_run_id, run_schema, success, take_string, to_value, Failure,
    NoArgs, Outcome, Spec,
};
use crate::app::App;
use crate::domain::RunFilter;
use crate::services::follow::Updates;
use crate::services::runs;
use crate::services::webhooks::{self, RotateInput, WebhookInput, WebhookPatch, WebhookSecrets};

/// Schema of `update_webhook`: `webhook`, then the fields to change (read into the service's
/// `WebhookPatch`).
#[derive(JsonSchema)]
#[allow(dead_code)]
struct UpdateWebhookArgs {
    /// The webhook's id (UUID) or its unique name.
    webhook: String,
    #[serde(flatten)]
    patch: WebhookPatch,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct WebhookRef {
    /// The webhook's id (UUID) or its unique name.
    webhook: String,
}

/// Schema of `rotate_webhook_secret`: `webhook`, then the service's `RotateInput`.
#[derive(JsonSchema)]
#[allow(dead_code)]
struct RotateArgs {
    /// The webhook's id (UUID) or its unique name.
    webhook: String,
    #[serde(flatten)]
    rotation: RotateInput,
}

#[derive(Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub(super) struct ReplayArgs {
    /// A run started by a webhook delivery: its stored payload starts a new run through the
    /// webhook's current settings.
    pub(super) run_id: String,
    /// Wait for the new run to end and return its result. Default false.
    #[serde(default)]
    wait: bool,
}

fn webhook_schema() -> Value {
    json!({ "type": "object", "description": "A webhook: id, name, enabled, url_hint, job_id, prompt_template, run settings, signature, limits" })
}

pub(super) fn specs() -> Vec<Spec> {
    let secrets = || {
        object(
            json!({
                "webhook": webhook_schema(),
                "url": { "type": "string", "description": "the secret URL; shown only now" },
                "signing_secret": { "type": "string", "description": "a generated signing secret; shown only now" },
            }),
            &["webhook", "url"],
        )
    };
    vec![
        Spec {
            name: "create_webhook",
            title: "Create a webhook",
            description: "Creates a secret URL that turns every HTTP POST (GitHub, Stripe, \
                Slack, any service) into a run, with values from the request filled into a \
                prompt template. The answer holds the URL (and any generated signing secret) \
                ONCE: give it to the user to paste into the sender. Example: {\"name\": \"new \
                issues\", \"prompt_template\": \"Triage GitHub issue #{{payload.issue.number}}: \
                {{payload.issue.title}}\\n\\n{{payload.issue.body}}\", \"allowed_tools\": \
                [\"Read\"], \"signature\": {\"scheme\": \"github\"}}",
            input: input::<WebhookInput>(),
            output: secrets(),
            read_only: false,
            destructive: false,
            idempotent: false,
            open_world: false,
        },
        Spec {
            name: "list_webhooks",
            title: "List webhooks",
            description: "Lists every webhook with its settings (never its secret URL, only \
                the URL's first characters). Example: {}",
            input: input::<NoArgs>(),
            output: object(
                json!({ "webhooks": { "type": "array", "items": webhook_schema() }, "count": { "type": "integer" } }),
                &["webhooks", "count"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "get_webhook",
            title: "Get a webhook",
            description: "Shows one webhook (by id or name) and its five latest runs. \
                Example: {\"webhook\": \"new issues\"}",
            input: input::<WebhookRef>(),
            output: object(
                json!({ "webhook": webhook_schema(), "recent_runs": { "type": "array", "items": run_schema() } }),
                &["webhook", "recent_runs"],
            ),
            read_only: true,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "update_webhook",
            title: "Update a webhook",
            description: "Changes some fields of a webhook (by id or name); fields left out keep \
                their value, null clears an optional one. Use enabled: false to pause it. The \
                URL stays the same (rotate_webhook_secret changes it). Example: {\"webhook\": \
                \"new issues\", \"prompt_template\": \"Label issue {{payload.issue.number}}\"}",
            input: input::<UpdateWebhookArgs>(),
            output: object(json!({ "webhook": webhook_schema() }), &["webhook"]),
            read_only: false,
            destructive: false,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "delete_webhook",
            title: "Delete a webhook",
            description: "Deletes a webhook (by id or name): its URL stops working for good; \
                its past runs stay readable. To pause it use update_webhook with enabled: false. \
                Example: {\"webhook\": \"new issues\"}",
            input: input::<WebhookRef>(),
            output: object(
                json!({ "deleted": { "type": "boolean" }, "webhook_id": { "type": "string" }, "name": { "type": "string" } }),
                &["deleted", "webhook_id", "name"],
            ),
            read_only: false,
            destructive: true,
            idempotent: true,
            open_world: false,
        },
        Spec {
            name: "rotate_webhook_secret",
            title: "Rotate a webhook's secret URL",
            description: "Gives a webhook a new secret URL (shown once) and, if asked, a new \
                signing secret. The old URL stops working at once, or after grace_secs so the \
                sender can be updated first. Example: {\"webhook\": \"new issues\", \
                \"grace_secs\": 3600, \"signing_secret\": true}",
            input: input::<RotateArgs>(),
            output: secrets(),
            read_only: false,
            destructive: true,
            idempotent: false,
            open_world: false,
        },
        Spec {
            name: "replay_delivery",
            title: "Replay a webhook delivery",
            description: "Starts a new run from the request a webhook run came from (stored \
                with the run), through the webhook's current template and settings: use it \
                after fixing a template or a failed run. With wait: true the call returns the \
                result. Example: {\"run_id\": \"0190…\", \"wait\": true}",
            input: input::<ReplayArgs>(),
            output: waited_run_schema(),
            read_only: false,
            destructive: false,
            idempotent: false,
            open_world: true,
        },
    ]
}

pub(super) async fn call(
    app: &Arc<App>,
    name: &str,
    args: JsonObject,
    context: &RequestContext<RoleServer>,
) -> Outcome {
    match name {
        "create_webhook" => create(app, args).await,
        "list_webhooks" => list(app, args).await,
        "get_webhook" => get(app, args).await,
        "update_webhook" => update(app, args).await,
        "delete_webhook" => delete(app, args).await,
        "rotate_webhook_secret" => rotate(app, args).await,
        "replay_delivery" => replay(app, args, context).await,
        other => Err(Failure::Message(format!("unknown webhook tool `{other}`"))),
    }
}

/// The answer to a create or a rotation, which shows the URL once.
fn secrets_result(verb: &str, secrets: WebhookSecrets) -> Outcome {
    let mut summary = format!(
        "{verb} webhook `{}`. Its URL, shown only now (give it to the sender; POST JSON, form or \
         text to it): {}",
        secrets.webhook.name, secrets.url
    );
    if let Some(secret) = &secrets.signing_secret {
        summary.push_str(&format!(
            "\nSigning secret, shown only now (set it at the sender): {secret}"
        ));
    }
    let mut value = json!({ "webhook": to_value(&secrets.webhook)?, "url": secrets.url });
    if let Some(secret) = secrets.signing_secret {
        value["signing_secret"] = json!(secret);
    }
    success(summary, value)
}

async fn create(app: &App, args: JsonObject) -> Outcome {
    let input: WebhookInput = parse(args)?;
    secrets_result("Created", webhooks::create(app, input).await?)
}

async fn list(app: &App, args: JsonObject) -> Outcome {
    let NoArgs {} = parse(args)?;
    let webhooks = webhooks::list(app).await?;
    let summary = match webhooks.len() {
        0 => "No webhooks yet; create_webhook makes one.".to_owned(),
        count => {
            let names: Vec<String> = webhooks
                .iter()
                .map(|w| {
                    format!(
                        "{} ({})",
                        w.name,
                        if w.enabled { "enabled" } else { "disabled" }
                    )
                })
                .collect();
            format!("{count} webhook(s): {}", names.join("; "))
        }
    };
    let count = webhooks.len();
    success(
        summary,
        json!({ "webhooks": to_value(&webhooks)?, "count": count }),
    )
}

async fn get(app: &App, args: JsonObject) -> Outcome {
    let WebhookRef { webhook } = parse(args)?;
    let found = webhooks::find(app, &webhook).await?;
    let recent = runs::list(
        app,
        RunFilter {
            webhook_id: Some(found.id),
            limit: 5,
            ..Default::default()
        },
    )
    .await?;
    let view = webhooks::view(app, &found);
    let summary = format!(
        "Webhook `{}` ({}), {}, {} recent run(s).",
        view.name,
        view.id,
        if view.enabled { "enabled" } else { "disabled" },
        recent.len()
    );
    success(
        summary,
        json!({ "webhook": to_value(&view)?, "recent_runs": to_value(&recent)? }),
    )
}

async fn update(app: &App, mut args: JsonObject) -> Outcome {
    let webhook = take_string(&mut args, "webhook", "the webhook's id or name")?;
    let patch: WebhookPatch = parse(args)?;
    let (view, signing_secret) = webhooks::update(app, &webhook, patch).await?;
    let mut summary = format!("Updated webhook `{}` ({}).", view.name, view.id);
    let mut value = json!({ "webhook": to_value(&view)? });
    if let Some(secret) = signing_secret {
        summary.push_str(&format!(
            " New signing secret, shown only now (set it at the sender): {secret}"
        ));
        value["signing_secret"] = json!(secret);
    }
    success(summary, value)
}

async fn delete(app: &App, args: JsonObject) -> Outcome {
    let WebhookRef { webhook } = parse(args)?;
    let deleted = webhooks::delete(app, &webhook).await?;
    success(
        format!(
            "Deleted webhook `{}` ({}); its URL no longer works, its runs stay.",
            deleted.name, deleted.id
        ),
        json!({ "deleted": true, "webhook_id": deleted.id, "name": deleted.name }),
    )
}

async fn rotate(app: &App, mut args: JsonObject) -> Outcome {
    let webhook = take_string(&mut args, "webhook", "the webhook's id or name")?;
    let input: RotateInput = parse(args)?;
    secrets_result("Rotated", webhooks::rotate(app, &webhook, input).await?)
}

async fn replay(app: &Arc<App>, args: JsonObject, context: &RequestContext<RoleServer>) -> Outcome {
    let ReplayArgs { run_id, wait } = parse(args)?;
    let run_id = parse_run_id("run_id", &run_id)?;
    let updates = Updates::subscribe(app);
    let run = webhooks::replay(app, run_id).await?;
    finish_run_call(app, run, wait, updates, context).await
}
