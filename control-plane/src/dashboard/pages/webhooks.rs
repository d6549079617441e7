//! Webhooks: the list, creating one (its URL and signing secret shown once), a webhook's page
//! with its deliveries (each a run, with its payload and replay), rotation, a test delivery.

use askama::Template;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::Response;
use serde_json::{json, Map, Value};

use super::runs::RunRow;
use super::{render, see_other, Chrome, PageError, PageResult};
use crate::dashboard::auth::{authorize, Action, Operator, Submitted};
use crate::dashboard::fields::Fields;
use crate::dashboard::format::{utc, wire_name};
use crate::dashboard::Dashboard;
use crate::domain::input::from_value;
use crate::domain::webhook::SignatureSchemeName;
use crate::domain::RunFilter;
use crate::services::webhooks::{self, RotateInput, WebhookInput, WebhookSecrets, WebhookView};
use crate::services::{jobs, runs};

struct WebhookRow {
    id: String,
    name: String,
    description: String,
    enabled: bool,
    url_hint: String,
    job: String,
    scheme: String,
}

#[derive(Template)]
#[template(path = "webhooks.html")]
struct WebhooksPage {
    chrome: Chrome,
    webhooks: Vec<WebhookRow>,
}

fn scheme_name(view: &WebhookView) -> String {
    wire_name(view.signature.scheme)
}

pub async fn list(State(dashboard): State<Dashboard>, operator: Operator) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let app = &dashboard.app;
    // Names only: no next fire is computed for them.
    let (views, all_jobs) = tokio::try_join!(webhooks::list(app), jobs::all(app))?;
    let job_name = |id: Option<autopilot_proto::JobId>| {
        id.and_then(|id| all_jobs.iter().find(|job| job.id == id))
            .map(|job| job.name.clone())
            .unwrap_or_default()
    };
    let rows = views
        .iter()
        .map(|view| WebhookRow {
            id: view.id.to_string(),
            name: view.name.clone(),
            description: view.description.clone().unwrap_or_default(),
            enabled: view.enabled,
            url_hint: view.url_hint.clone(),
            job: job_name(view.job_id),
            scheme: scheme_name(view),
        })
        .collect();
    Ok(render(&WebhooksPage {
        chrome: Chrome::new(&operator, "webhooks", "Webhooks"),
        webhooks: rows,
    }))
}

/// What the create form holds, as typed.
#[derive(Default)]
struct WebhookForm {
    name: String,
    description: String,
    job: String,
    prompt_template: String,
    scheme: String,
    secret: String,
    header: String,
    idempotency_header: String,
    model: String,
    allowed_tools: String,
}

impl WebhookForm {
    fn from_fields(form: &Fields) -> Self {
        let text = |name: &str| form.get(name).unwrap_or_default().to_owned();
        WebhookForm {
            name: text("name"),
            description: text("description"),
            job: text("job"),
            prompt_template: text("prompt_template"),
            scheme: text("scheme"),
            secret: text("secret"),
            header: text("header"),
            idempotency_header: text("idempotency_header"),
            model: text("model"),
            allowed_tools: text("allowed_tools"),
        }
    }

    /// The webhook as the API's JSON, so the form is checked exactly like the API.
    fn to_json(&self) -> Value {
        let mut hook = Map::new();
        let given = |value: &str| {
            Some(value.trim())
                .filter(|v| !v.is_empty())
                .map(str::to_owned)
        };
        hook.insert("name".into(), json!(self.name.trim()));
        for (key, value) in [
            ("description", &self.description),
            ("job", &self.job),
            ("idempotency_header", &self.idempotency_header),
            ("model", &self.model),
        ] {
            if let Some(value) = given(value) {
                hook.insert(key.into(), json!(value));
            }
        }
        if !self.prompt_template.trim().is_empty() {
            hook.insert("prompt_template".into(), json!(self.prompt_template));
        }
        let tools: Vec<&str> = self
            .allowed_tools
            .lines()
            .map(str::trim)
            .filter(|line| !line.is_empty())
            .collect();
        if !tools.is_empty() {
            hook.insert("allowed_tools".into(), json!(tools));
        }
        let mut signature = Map::new();
        signature.insert(
            "scheme".into(),
            json!(given(&self.scheme).unwrap_or_else(|| "github".into())),
        );
        if let Some(secret) = given(&self.secret) {
            signature.insert("secret".into(), json!(secret));
        }
        if let Some(header) = given(&self.header) {
            signature.insert("header".into(), json!(header));
        }
        hook.insert("signature".into(), Value::Object(signature));
        Value::Object(hook)
    }
}

#[derive(Template)]
#[template(path = "webhook_new.html")]
struct NewWebhookPage {
    chrome: Chrome,
    form: WebhookForm,
    error: Option<(String, String)>,
    jobs: Vec<String>,
    schemes: [&'static str; 5],
}

async fn new_page(
    dashboard: &Dashboard,
    operator: &Operator,
    form: WebhookForm,
    error: Option<(String, String)>,
) -> PageResult<NewWebhookPage> {
    let jobs = jobs::all(&dashboard.app)
        .await?
        .into_iter()
        .map(|job| job.name)
        .collect();
    Ok(NewWebhookPage {
        chrome: Chrome::new(operator, "webhooks", "New webhook"),
        form,
        error,
        jobs,
        schemes: SignatureSchemeName::NAMES,
    })
}

pub async fn new(State(dashboard): State<Dashboard>, operator: Operator) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let form = WebhookForm {
        scheme: "github".into(),
        ..Default::default()
    };
    Ok(render(&new_page(&dashboard, &operator, form, None).await?))
}

#[derive(Template)]
#[template(path = "webhook_secrets.html")]
struct SecretsPage {
    chrome: Chrome,
    id: String,
    name: String,
    url: String,
    signing_secret: Option<String>,
    rotated: bool,
}

fn secrets_page(operator: &Operator, secrets: WebhookSecrets, rotated: bool) -> Response {
    render(&SecretsPage {
        chrome: Chrome::new(
            operator,
            "webhooks",
            format!("Webhook {}", secrets.webhook.name),
        ),
        id: secrets.webhook.id.to_string(),
        name: secrets.webhook.name.clone(),
        url: secrets.url,
        signing_secret: secrets.signing_secret,
        rotated,
    })
}

pub async fn create(
    State(dashboard): State<Dashboard>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditWebhooks)?;
    let form = WebhookForm::from_fields(&fields);
    let created = match from_value::<WebhookInput>(form.to_json()) {
        Ok(input) => webhooks::create(&dashboard.app, input)
            .await
            .map_err(PageError::from),
        Err(err) => Err(err.into()),
    };
    match created {
        // The URL and secret are on this response only: it is not cached (`no-store`).
        Ok(secrets) => Ok(secrets_page(&operator, secrets, false)),
        Err(PageError::Api(api))
            if matches!(
                api.status,
                StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST | StatusCode::CONFLICT
            ) =>
        {
            let error = (
                api.field.clone().unwrap_or_else(|| "name".into()),
                api.message,
            );
            let mut response = render(&new_page(&dashboard, &operator, form, Some(error)).await?);
            *response.status_mut() = StatusCode::UNPROCESSABLE_ENTITY;
            Ok(response)
        }
        Err(err) => Err(err),
    }
}

#[derive(Template)]
#[template(path = "webhook.html")]
struct WebhookPage {
    chrome: Chrome,
    id: String,
    view: WebhookView,
    scheme: String,
    job: String,
    settings_json: String,
    previous_url_expires: String,
    deliveries: Vec<RunRow>,
    test_payload: String,
}

pub async fn show(
    State(dashboard): State<Dashboard>,
    operator: Operator,
    Path(id): Path<String>,
) -> PageResult<Response> {
    authorize(&operator, Action::View)?;
    let app = &dashboard.app;
    let webhook = webhooks::find(app, &id).await?;
    let view = webhooks::view(app, &webhook);
    let job = match view.job_id {
        Some(job_id) => jobs::get(app, job_id)
            .await
            .map(|job| job.name)
            .unwrap_or_default(),
        None => String::new(),
    };
    let deliveries = runs::list(
        app,
        RunFilter {
            webhook_id: Some(webhook.id),
            limit: 50,
            ..Default::default()
        },
    )
    .await?;
    Ok(render(&WebhookPage {
        chrome: Chrome::new(&operator, "webhooks", view.name.clone()),
        id: view.id.to_string(),
        scheme: scheme_name(&view),
        job,
        settings_json: serde_json::to_string_pretty(&view).unwrap_or_default(),
        previous_url_expires: view.previous_url_expires_at.map(utc).unwrap_or_default(),
        view,
        deliveries: deliveries.iter().map(RunRow::from).collect(),
        test_payload: "{\n  \"test\": true\n}".to_owned(),
    }))
}

/// A new URL (and, if ticked, a new signing secret), shown once.
pub async fn rotate(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditWebhooks)?;
    let mut input = json!({});
    if let Some(grace) = fields.text("grace_secs") {
        input["grace_secs"] = grace
            .parse::<u64>()
            .map(Value::from)
            .unwrap_or_else(|_| Value::from(grace));
    }
    if fields.checked("new_secret") {
        input["signing_secret"] = match fields.text("secret") {
            Some(secret) => json!(secret),
            None => json!(true),
        };
    }
    let input: RotateInput = from_value(input)?;
    let secrets = webhooks::rotate(&dashboard.app, &id, input).await?;
    Ok(secrets_page(&operator, secrets, true))
}

/// Starts a run from a JSON payload typed on the page, as if it had been delivered.
pub async fn test_delivery(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted {
        operator,
        form: fields,
    }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::Run)?;
    let payload = fields.get("payload").unwrap_or("{}");
    let run = webhooks::send_test(&dashboard.app, &id, payload).await?;
    Ok(see_other(&format!("/runs/{}", run.id)))
}

pub async fn delete(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
    Submitted { operator, .. }: Submitted,
) -> PageResult<Response> {
    authorize(&operator, Action::EditWebhooks)?;
    webhooks::delete(&dashboard.app, &id).await?;
    Ok(see_other("/webhooks"))
}
