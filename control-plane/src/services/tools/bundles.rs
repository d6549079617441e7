//! Tool bundles: named sets of server grants and built-in tools (the first seed called them
//! workspaces). Jobs, webhooks and quick runs name them in `bundles`; a run gets what its
//! bundles give as they are when it is claimed.

use chrono::Utc;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::app::App;
use crate::domain::settings::{grants, tools};
use crate::domain::tools::{validate_server_name, ToolBundle, ToolGrant};
use crate::domain::{RunSettingsPatch, ServiceError, ServiceResult};
use crate::services::jobs::{self, JobPatch};
use crate::services::webhooks::{self, WebhookPatch};
use crate::store::StoreError;

use super::grants::check_servers;

/// A bundle as clients give it.
#[derive(Deserialize, Serialize, Debug, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BundleInput {
    /// 2 to 32 lowercase letters, digits and `-`, e.g. `reporting`.
    pub name: String,
    /// What the bundle is for.
    #[serde(default)]
    pub description: Option<String>,
    /// MCP servers it grants, each up to an access level, e.g.
    /// `[{"server": "email", "access": "write"}]`.
    #[serde(default)]
    pub servers: Vec<ToolGrant>,
    /// Built-in tools it allows, e.g. `["Read", "Bash(git log:*)"]`.
    #[serde(default)]
    pub tools: Vec<String>,
}

/// Gives a bundle to a job or a webhook (or takes it away).
#[derive(Deserialize, Serialize, Debug, Clone, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AssignInput {
    /// The bundle's name.
    pub bundle: String,
    /// A job's id or name (give this or `webhook`).
    #[serde(default)]
    pub job: Option<String>,
    /// A webhook's id or name, for a webhook with run settings of its own.
    #[serde(default)]
    pub webhook: Option<String>,
    /// Take the bundle away instead. Default false.
    #[serde(default)]
    pub remove: bool,
}

fn json<T: Serialize>(value: &T) -> ServiceResult<Value> {
    serde_json::to_value(value).map_err(|err| ServiceError::Internal(anyhow::Error::new(err)))
}

fn not_found(name: &str) -> ServiceError {
    ServiceError::NotFound {
        what: "tool bundle",
        id: name.to_owned(),
    }
}

async fn validate(
    app: &App,
    input: BundleInput,
    existing: Option<&ToolBundle>,
) -> ServiceResult<ToolBundle> {
    validate_server_name("name", &input.name)?;
    if input.servers.is_empty() && input.tools.is_empty() {
        return Err(ServiceError::invalid(
            "servers",
            "a bundle grants at least one server or tool",
        ));
    }
    let servers = grants(input.servers)?;
    check_servers(app, &servers).await?;
    let now = Utc::now();
    Ok(ToolBundle {
        name: input.name,
        description: input.description.filter(|d| !d.trim().is_empty()),
        servers,
        tools: tools("tools", input.tools)?,
        created_at: existing.map_or(now, |b| b.created_at),
        updated_at: now,
    })
}

pub async fn create_bundle(app: &App, input: BundleInput) -> ServiceResult<ToolBundle> {
    let bundle = validate(app, input, None).await?;
    app.store.insert_bundle(&bundle).await?;
    tracing::info!(bundle.name = %bundle.name, "tool bundle created");
    Ok(bundle)
}

/// Replaces the bundle `name` with `input` (which keeps the name).
pub async fn replace_bundle(
    app: &App,
    name: &str,
    input: BundleInput,
) -> ServiceResult<ToolBundle> {
    let existing = get_bundle(app, name).await?;
    if input.name != existing.name {
        return Err(ServiceError::invalid(
            "name",
            "a bundle cannot be renamed (jobs name it); create a new one instead",
        ));
    }
    let bundle = validate(app, input, Some(&existing)).await?;
    match app.store.update_bundle(&bundle).await {
        Err(StoreError::NotFound) => return Err(not_found(name)),
        other => other?,
    }
    tracing::info!(bundle.name = %bundle.name, "tool bundle updated");
    Ok(bundle)
}

pub async fn get_bundle(app: &App, name: &str) -> ServiceResult<ToolBundle> {
    app.store
        .list_bundles()
        .await?
        .into_iter()
        .find(|bundle| bundle.name == name)
        .ok_or_else(|| not_found(name))
}

pub async fn list_bundles(app: &App) -> ServiceResult<Vec<ToolBundle>> {
    Ok(app.store.list_bundles().await?)
}

/// Deletes a bundle no job or webhook names; one still named is a conflict naming them.
pub async fn delete_bundle(app: &App, name: &str) -> ServiceResult<()> {
    let mut users: Vec<String> = app
        .store
        .list_jobs()
        .await?
        .into_iter()
        .filter(|job| job.settings.bundles.iter().any(|b| b == name))
        .map(|job| format!("job `{}`", job.name))
        .collect();
    users.extend(
        app.store
            .list_webhooks()
            .await?
            .into_iter()
            .filter(|webhook| webhook.config.run.bundles.iter().any(|b| b == name))
            .map(|webhook| format!("webhook `{}`", webhook.name)),
    );
    if !users.is_empty() {
        return Err(ServiceError::Conflict(format!(
            "the tool bundle `{name}` is still given to {}; take it away first (assign_bundle \
             with remove: true)",
            users.join(", ")
        )));
    }
    if !app.store.delete_bundle(name).await? {
        return Err(not_found(name));
    }
    tracing::info!(bundle.name = %name, "tool bundle deleted");
    Ok(())
}

/// Adds the bundle to (or removes it from) a job's or a webhook's bundles; returns the job or
/// webhook as it now is.
pub async fn assign_bundle(app: &App, input: AssignInput) -> ServiceResult<Value> {
    if !input.remove {
        get_bundle(app, &input.bundle).await?;
    }
    let change = |mut bundles: Vec<String>| {
        bundles.retain(|b| b != &input.bundle);
        if !input.remove {
            bundles.push(input.bundle.clone());
        }
        RunSettingsPatch {
            bundles: Some(bundles),
            ..RunSettingsPatch::default()
        }
    };
    match (&input.job, &input.webhook) {
        (Some(job), None) => {
            let job = jobs::find(app, job).await?;
            let patch = JobPatch {
                run: change(job.settings.bundles.clone()),
                ..JobPatch::default()
            };
            json(&jobs::update(app, job.id, patch).await?)
        }
        (None, Some(webhook)) => {
            let found = webhooks::find(app, webhook).await?;
            if found.job_id.is_some() {
                return Err(ServiceError::invalid(
                    "webhook",
                    format!(
                        "the webhook `{}` runs a job, with that job's settings: give the bundle \
                         to the job instead",
                        found.name
                    ),
                ));
            }
            let patch = WebhookPatch {
                run: change(found.config.run.bundles.clone()),
                ..WebhookPatch::default()
            };
            let (view, _) = webhooks::update(app, webhook, patch).await?;
            json(&view)
        }
        _ => Err(ServiceError::invalid(
            "job",
            "name exactly one of `job` and `webhook`",
        )),
    }
}
